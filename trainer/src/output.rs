//! What ncf may write where. Outputs are written under a temporary name beside the target and
//! renamed into place. An existing target is replaced only when it is an ncf output of the same
//! kind, or with `--force`; other files in an output directory are never touched. An output that
//! is one of the command's inputs, or a directory holding the working directory, is refused
//! before anything is written, `--force` or not.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The file that marks a directory as an ncf output, holding its kind (`run`, `split`, `bench`).
pub const MARKER: &str = ".ncf-output";

/// The kinds of output directory ncf writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// `ncf train --out`: config, metrics, curves and checkpoints.
    Run,
    /// `ncf data split --out`: train.csv, test.csv, test.negative and config.toml.
    Split,
    /// `ncf bench --out`: bench.json and bench.png.
    Bench,
    /// `ncf tune --out`: tune.toml, results, best.toml, tune.png and the trials' runs.
    Tune,
    /// `ncf recommend --shard I/N --out`: part files and their manifests.
    Shards,
    /// `ncf export --to torch`: a PyTorch state dict, its config and the raw ids.
    TorchExport,
    /// `ncf export --to embeddings`: user and item vectors as Parquet, and their config.
    EmbeddingsExport,
}

impl DirKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Split => "split",
            Self::Bench => "bench",
            Self::Tune => "tune",
            Self::Shards => "recommend-shards",
            Self::TorchExport => "torch export",
            Self::EmbeddingsExport => "embeddings export",
        }
    }

    /// Files by which a directory written before the marker existed is recognised (none: never).
    fn legacy_signature(self) -> &'static [&'static str] {
        match self {
            Self::Run => &["config.toml", "last/checkpoint.json"],
            Self::Split => &["train.csv", "test.csv", "test.negative", "config.toml"],
            Self::Bench => &["bench.json", "bench.png"],
            // Newer than the marker: always marked, never recognised without it.
            Self::Tune | Self::Shards | Self::TorchExport | Self::EmbeddingsExport => &[],
        }
    }
}

/// What an output directory held before this command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Absent or empty.
    Fresh,
    /// An ncf output of the same kind: its ncf files may be replaced.
    Same,
    /// Something else, written into because of `--force`.
    Forced,
}

/// `path` made absolute without requiring it to exist: the deepest existing ancestor is
/// canonicalized (links resolved) and the rest appended.
pub fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return tail.iter().rev().fold(c, |p: PathBuf, part| p.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_owned());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output that equals one of `inputs` (empty paths stand for inputs not given).
pub fn refuse_inputs(out: &Path, inputs: &[&Path]) -> Result<()> {
    let target = absolute(out);
    if let Some(input) = inputs.iter().find(|i| !i.as_os_str().is_empty() && absolute(i) == target) {
        bail!("{}: is also an input of this command ({}); write the output elsewhere", out.display(), input.display());
    }
    Ok(())
}

/// Checks that `dir` may receive a `kind` output writing the files `writes` (relative to it),
/// reading `inputs`. Nothing is created.
pub fn claim_dir(dir: &Path, kind: DirKind, writes: &[&str], inputs: &[&Path], force: bool) -> Result<DirState> {
    let abs = absolute(dir);
    if let Ok(cwd) = std::env::current_dir().map(|c| absolute(&c))
        && cwd.starts_with(&abs)
    {
        bail!("{}: is the working directory or holds it; name a new directory for the {} output", dir.display(), kind.name());
    }
    refuse_inputs(dir, inputs)?;
    for w in writes {
        refuse_inputs(&dir.join(w), inputs)?;
    }
    if !dir.exists() {
        return Ok(DirState::Fresh);
    }
    if !dir.is_dir() {
        bail!("{}: exists and is not a directory; --out takes a directory for the {} output", dir.display(), kind.name());
    }
    let marker = dir.join(MARKER);
    if marker.exists() {
        let found = std::fs::read_to_string(&marker).unwrap_or_default();
        let found = found.trim();
        if found == kind.name() {
            return Ok(DirState::Same);
        }
        if !force {
            bail!("{}: holds an ncf {found} output, not a {} output; choose another --out (or pass --force)", dir.display(), kind.name());
        }
        return Ok(DirState::Forced);
    }
    let legacy = kind.legacy_signature();
    if !legacy.is_empty() && legacy.iter().all(|f| dir.join(f).exists()) {
        return Ok(DirState::Same);
    }
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    match entries.next() {
        None => Ok(DirState::Fresh),
        Some(_) if force => Ok(DirState::Forced),
        Some(first) => {
            let first = first.map(|e| e.file_name().to_string_lossy().into_owned()).unwrap_or_default();
            bail!(
                "{}: exists and is not an ncf {} output (it holds {first:?} and maybe more); choose a new directory, \
                 or pass --force to write ncf's files into it (other files are left alone)",
                dir.display(),
                kind.name()
            )
        }
    }
}

/// Writes the marker of `kind` into `dir`.
pub fn mark(dir: &Path, kind: DirKind) -> Result<()> {
    write_atomic(&dir.join(MARKER), format!("{}\n", kind.name()).as_bytes())
}

/// Checks that the file `out` may be written: not an input, not a directory, in an existing
/// directory, and either absent, empty, an ncf output of the same kind (`same_kind`), or
/// `--force`d. Nothing is created.
pub fn claim_file(out: &Path, inputs: &[&Path], force: bool, what: &str, same_kind: impl Fn(&Path) -> bool) -> Result<()> {
    refuse_inputs(out, inputs)?;
    if out.is_dir() {
        bail!("{}: is a directory; --out takes a file", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{}: no such directory for the output {}; create it first", parent.display(), out.display());
    }
    let existing = std::fs::metadata(out).ok();
    if existing.is_none_or(|m| m.len() == 0) || force || same_kind(out) {
        return Ok(());
    }
    bail!("{}: exists and is not an ncf {what}; choose another path or pass --force to replace it", out.display())
}

/// `.NAME.tmp-PID` beside `path`, so the final rename stays on one file system.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `data` to `path` through a synced temporary file renamed into place: a reader (or a
/// crash) sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// Writes an output directory `out` holding `files` (names inside it, the marker included when
/// `write` marks it): `write` fills a temporary directory beside `out`, whose files then move in,
/// the whole directory when `out` is new, else file by file (each an atomic rename), so other
/// files in `out` are left alone and a failure leaves no partial file. A name of `files` that
/// `write` did not write is removed from `out`, so the directory never mixes two outputs. `what`
/// names the output in messages.
pub fn write_dir(out: &Path, files: &[&str], what: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot write the {what} (as {} first)", out.display(), tmp.display()))?;
    let written = (|| {
        write(&tmp)?;
        if !out.exists() {
            return std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()));
        }
        for f in files {
            let (from, to) = (tmp.join(f), out.join(f));
            if from.exists() {
                std::fs::rename(&from, &to).with_context(|| format!("writing {}", to.display()))?;
            } else if to.exists() {
                std::fs::remove_file(&to).with_context(|| format!("removing {}", to.display()))?;
            }
        }
        std::fs::remove_dir(&tmp).with_context(|| format!("removing {}", tmp.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Puts the complete directory `tmp` at `dir`. With `dir` absent it is one rename. Otherwise the
/// two are exchanged atomically where the OS can (Linux `renameat2`), so a crash at any moment
/// leaves either the old or the new directory at `dir`, and the old one is then removed;
/// `is_ours` must confirm that the old one is an ncf output before it is replaced.
pub fn replace_dir(tmp: &Path, dir: &Path, is_ours: impl Fn(&Path) -> bool) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).with_context(|| format!("renaming into {}", dir.display()));
    }
    if !is_ours(dir) {
        bail!("{}: exists and is not what ncf wrote there; move it away or choose another --out", dir.display());
    }
    if exchange(tmp, dir)? {
        // `tmp` now holds the old directory.
        return std::fs::remove_dir_all(tmp).with_context(|| format!("removing the replaced {}", dir.display()));
    }
    let old = dir.with_file_name(format!(".{}.old-{}", dir.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    std::fs::rename(dir, &old).with_context(|| format!("replacing {}", dir.display()))?;
    std::fs::rename(tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    std::fs::remove_dir_all(&old).with_context(|| format!("removing the replaced {}", dir.display()))
}

/// Atomically exchanges two paths; `false` where the OS or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 reads them only during the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(anyhow::Error::new(err).context(format!("replacing {}", b.display()))),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> Result<bool> {
    Ok(false)
}

/// Removes leftovers of killed earlier writers beside `path`: `.NAME.tmp-PID` and `.NAME.old-PID`
/// entries whose process is gone (names only ncf gives).
pub fn sweep_leftovers(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let pid = [".tmp-", ".old-"].iter().find_map(|s| file.strip_prefix(&format!(".{name}{s}")));
        let digits = |p: &str| p[..p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len())].parse::<u32>().ok();
        let Some(pid) = pid.and_then(digits) else { continue };
        let gone = cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists();
        if pid != std::process::id() && gone {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ncf-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn directories_are_claimed_only_when_fresh_ours_or_forced() {
        let root = temp("claim");
        let input = root.join("data.csv");
        std::fs::write(&input, "user,item\n1,2\n").unwrap();
        let claim = |d: &Path, force| claim_dir(d, DirKind::Split, &["train.csv"], &[&input], force);
        assert_eq!(claim(&root.join("new"), false).unwrap(), DirState::Fresh);
        // The root holds a user's file: refused, unless forced.
        let e = claim(&root, false).unwrap_err().to_string();
        assert!(e.contains("not an ncf split output") && e.contains("--force"), "{e}");
        // An input inside it that the command would write over is refused even when forced.
        std::fs::write(root.join("train.csv"), "mine").unwrap();
        let e = claim_dir(&root, DirKind::Split, &["train.csv"], &[&root.join("train.csv")], true).unwrap_err().to_string();
        assert!(e.contains("is also an input"), "{e}");
        assert_eq!(claim(&root, true).unwrap(), DirState::Forced);
        let ours = root.join("ours");
        std::fs::create_dir_all(&ours).unwrap();
        mark(&ours, DirKind::Split).unwrap();
        assert_eq!(claim(&ours, false).unwrap(), DirState::Same);
        let e = claim_dir(&ours, DirKind::Run, &[], &[], false).unwrap_err().to_string();
        assert!(e.contains("ncf split output, not a run"), "{e}");
        // The working directory and its ancestors, whatever the spelling.
        for d in [Path::new("."), Path::new(""), Path::new("..")] {
            let e = claim_dir(d, DirKind::Split, &[], &[], true).unwrap_err().to_string();
            assert!(e.contains("working directory"), "{e}");
        }
        let e = claim_file(&input, &[&input], true, "export", |_| true).unwrap_err().to_string();
        assert!(e.contains("is also an input"), "{e}");
        let e = claim_file(&root.join("missing/x.csv"), &[], false, "export", |_| true).unwrap_err().to_string();
        assert!(e.contains("no such directory"), "{e}");
        let e = claim_file(&input, &[], false, "export", |_| false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        claim_file(&input, &[], false, "export", |_| true).unwrap();
    }

    #[test]
    fn replace_dir_swaps_whole_directories() {
        let root = temp("replace");
        let (dir, tmp) = (root.join("last"), root.join(".last.tmp-1"));
        for (d, v) in [(&dir, "old"), (&tmp, "new")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("f"), v).unwrap();
        }
        let e = replace_dir(&tmp, &dir, |_| false).unwrap_err().to_string();
        assert!(e.contains("not what ncf wrote"), "{e}");
        replace_dir(&tmp, &dir, |_| true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "new");
        assert!(!tmp.exists());
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["last"], "nothing left beside it");
    }
}
