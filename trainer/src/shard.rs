//! Sharded batch exports: `ncf recommend --shard I/N` writes the users whose raw id hashes to
//! shard I of N as one part file plus a small manifest, so any scheduler (Slurm job arrays,
//! Kubernetes indexed Jobs, Spark) can run the shards as independent processes;
//! `ncf recommend --merge DIR` checks that every shard is there and that they agree.
//!
//! ```text
//! DIR/part-00002-of-00004.parquet   shard 2's rows (or .csv / .jsonl)
//! DIR/part-00002-of-00004.json      its manifest: checkpoint hash, shard, options, rows, users,
//!                                   CRC-32 of the part (written after the part, both atomically)
//! ```
//!
//! A user's shard depends only on its raw id and N (FNV-1a of the id's bytes, mod N), never on
//! the checkpoint or on earlier runs, so re-running one shard replaces exactly its part.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::manifest::fnv1a64;
use crate::output;

/// Bumped when a manifest field changes meaning.
const SHARD_FORMAT: u32 = 1;

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with 0 ≤ I < N.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: write the shard as I/N with 0 <= I < N, e.g. 0/4 (Slurm: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether the user with raw id `raw` belongs to this shard.
    pub fn holds(&self, raw: &str) -> bool {
        (fnv1a64(raw.as_bytes()) % self.count as u64) as usize == self.index
    }

    /// `part-IIIII-of-NNNNN`.
    pub fn stem(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

/// What every shard of one export must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    /// FNV-1a 64 of the checkpoint's `checkpoint.json`, which holds the CRC-32 of its weights.
    pub checkpoint_hash: String,
    /// The checkpoint directory as given to the first shard (informative).
    pub checkpoint: String,
    pub top_n: usize,
    pub include_seen: bool,
    /// `--users` and `--items` as given (`all`, a file, or ids).
    pub users: String,
    pub items: Option<String>,
    pub columns: Vec<String>,
    /// File extension of the parts: csv, parquet or jsonl.
    pub format: String,
}

/// `part-…-of-….json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartManifest {
    pub shard_format: u32,
    pub shard: usize,
    pub shards: usize,
    pub spec: ExportSpec,
    /// The part file's name, beside the manifest.
    pub file: String,
    pub rows: usize,
    pub users: usize,
    /// CRC-32 of the part file.
    pub crc32: u32,
    pub written_at: String,
}

/// The hash identifying a checkpoint directory's weights and metadata.
pub fn checkpoint_hash(checkpoint_dir: &Path) -> Result<String> {
    let path = checkpoint_dir.join("checkpoint.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:016x}", fnv1a64(&bytes)))
}

/// Marks `dir` as a sharded export, creating it; refuses a directory holding anything other than
/// shard files unless `force`. Shards started together may race here: each accepts the others'
/// part files and temporary files.
pub fn claim_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.is_file() {
        bail!("{}: is a file; with --shard, --out names a directory for the parts", dir.display());
    }
    let ours = |name: &str| name == output::MARKER || name.starts_with("part-") || name.starts_with('.') && name.contains(".tmp-");
    if dir.is_dir() && !force {
        let marker = std::fs::read_to_string(dir.join(output::MARKER)).unwrap_or_default();
        let found = marker.trim();
        if !found.is_empty() && found != output::DirKind::Shards.name() {
            bail!("{}: holds an ncf {found} output, not sharded recommendations; choose another --out (or pass --force)", dir.display());
        }
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !ours(&name) {
                bail!(
                    "{}: holds {name:?}, which is not a shard of an ncf export; choose a new directory, or pass --force to write the \
                     parts into it (other files are left alone)",
                    dir.display()
                );
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    output::mark(dir, output::DirKind::Shards)
}

/// The part file of `shard` in `dir` for format extension `ext`.
pub fn part_path(dir: &Path, shard: Shard, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}", shard.stem()))
}

/// Writes the manifest of a finished part (after the part itself).
pub fn write_manifest(dir: &Path, shard: Shard, spec: ExportSpec, part: &Path, rows: usize, users: usize) -> Result<()> {
    let bytes = std::fs::read(part).with_context(|| format!("reading {}", part.display()))?;
    let manifest = PartManifest {
        shard_format: SHARD_FORMAT,
        shard: shard.index,
        shards: shard.count,
        spec,
        file: part.file_name().expect("a part file name").to_string_lossy().into_owned(),
        rows,
        users,
        crc32: crc32fast::hash(&bytes),
        written_at: crate::manifest::rfc3339(std::time::SystemTime::now()),
    };
    let text = serde_json::to_string_pretty(&manifest).expect("the manifest serializes");
    output::write_atomic(&dir.join(format!("{}.json", shard.stem())), text.as_bytes())
}

/// What `--merge` found: the shards' shared spec and totals.
#[derive(Debug)]
pub struct Merged {
    pub shards: usize,
    pub rows: usize,
    pub users: usize,
    pub spec: ExportSpec,
}

/// Checks the sharded export in `dir`: one shard count, every shard present once, every part's
/// CRC-32 as its manifest says, and one checkpoint and set of options across shards.
pub fn check(dir: &Path) -> Result<Merged> {
    let mut manifests = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read the sharded export", dir.display()))?;
    for e in entries {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let m: PartManifest = serde_json::from_str(&text).with_context(|| format!("{}: malformed shard manifest", path.display()))?;
            manifests.push((path, m));
        }
    }
    let Some((first_path, first)) = manifests.first().cloned() else {
        bail!("{}: holds no shard manifests (part-*-of-*.json); run `ncf recommend --shard I/N --out {0}` for each shard", dir.display());
    };
    manifests.sort_by_key(|(_, m)| m.shard);
    let n = first.shards;
    for (path, m) in &manifests {
        if m.shards != n {
            bail!("{}: shard {} of {}, but {} says {} shards: the directory mixes two exports", path.display(), m.shard, m.shards, first_path.display(), n);
        }
        if m.spec.checkpoint_hash != first.spec.checkpoint_hash {
            bail!(
                "{}: written from another checkpoint ({}) than {} ({}); rerun that shard from the same checkpoint",
                path.display(),
                m.spec.checkpoint,
                first_path.display(),
                first.spec.checkpoint
            );
        }
        if m.spec != first.spec {
            bail!("{}: written with other options (--top-n, --users, --items, --include-seen or format) than {}", path.display(), first_path.display());
        }
        let part = dir.join(&m.file);
        let bytes = std::fs::read(&part).with_context(|| format!("{}: the part of shard {} is missing; rerun that shard", part.display(), m.shard))?;
        if crc32fast::hash(&bytes) != m.crc32 {
            bail!("{}: its CRC-32 differs from its manifest's (changed or cut short); rerun shard {}", part.display(), m.shard);
        }
    }
    let present: Vec<usize> = manifests.iter().map(|(_, m)| m.shard).collect();
    let missing: Vec<String> = (0..n).filter(|i| !present.contains(i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        bail!("{}: {} of {n} shards are missing: {}; run them with --shard I/{n}", dir.display(), missing.len(), missing.join(", "));
    }
    Ok(Merged { shards: n, rows: manifests.iter().map(|(_, m)| m.rows).sum(), users: manifests.iter().map(|(_, m)| m.users).sum(), spec: first.spec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_users_by_id_alone() {
        let s: Shard = "2/4".parse().unwrap();
        assert_eq!((s.index, s.count, s.stem()), (2, 4, "part-00002-of-00004".to_owned()));
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let ids: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
        let shards: Vec<Shard> = (0..4).map(|index| Shard { index, count: 4 }).collect();
        for id in &ids {
            assert_eq!(shards.iter().filter(|s| s.holds(id)).count(), 1, "exactly one shard holds {id}");
        }
        let sizes: Vec<usize> = shards.iter().map(|s| ids.iter().filter(|id| s.holds(id)).count()).collect();
        assert!(sizes.iter().all(|&n| (200..300).contains(&n)), "balanced: {sizes:?}");
        // The assignment is a fixed function of the id: FNV-1a 64 mod N.
        assert!(Shard { index: (0xaf63_dc4c_8601_ec8c_u64 % 3) as usize, count: 3 }.holds("a"));
    }
}
