//! `ncf recommend`: top-N items per user from a checkpoint, scored in chunks of users against the
//! whole catalogue with the user's training and validation items masked, written as `user,rank,item,score`
//! (then `source` and joined item metadata) in CSV, Parquet or JSONL.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use clap::ValueEnum;
use ncf_datasets::{ColumnRef, IdMap, KeyedTable, UserItems};
use ncf_model::{ItemSide, Ncf};

use crate::backend::{self, BackendName};
use crate::checkpoint;
use crate::export::{Export, Kind, OutFormat, Values};
use crate::host;
use crate::output;
use crate::progress::Progress;
use crate::shard::{self, Shard};

/// Scores per chunk of users on the CPU (8 MiB): small enough that the host top-k reads them
/// from cache; measured faster than larger chunks on the 30k × 41k benchmark.
const HOST_SCORE_FLOATS: usize = 2 << 20;
/// Scores per chunk of users on a GPU (128 MiB): fewer, larger launches and reads.
const DEVICE_SCORE_FLOATS: usize = 32 << 20;
/// Fewest users per chunk where memory allows: tiny matmuls waste the CPU.
const MIN_CHUNK: usize = 16;
/// Floats of the `[users × items, width]` MLP activations one chunk may hold (128 MiB).
const MLP_FLOATS: usize = 32 << 20;

/// Above this `k`, a row's top-k uses a partial sort instead of an insertion buffer.
const SMALL_K: usize = 64;

/// What to do with requested users the checkpoint has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnknownUsers {
    /// Fail before writing anything.
    Error,
    /// Leave them out of the output.
    Skip,
    /// Give them the most popular training items, flagged `source = popularity`.
    Popular,
}

/// The best `k` of one row: (item, score), best first, ties by lower item id; masked (-inf) and
/// NaN entries dropped.
fn top_k_row(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k > SMALL_K {
        let mut idx: Vec<u32> = (0..row.len() as u32).filter(|&i| row[i as usize] > f32::NEG_INFINITY).collect();
        let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        let k = k.min(idx.len());
        if k > 0 && k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
        }
        idx.truncate(k);
        idx.sort_unstable_by(cmp);
        return idx.into_iter().map(|i| (i, row[i as usize])).collect();
    }
    // One comparison per item against the current k-th best; ids ascend, so an equal score
    // never displaces an earlier (lower) id.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    let mut worst = f32::NEG_INFINITY;
    for (i, &s) in row.iter().enumerate() {
        if !(s > worst) && (best.len() == k || !(s > f32::NEG_INFINITY)) {
            continue;
        }
        let pos = best.partition_point(|&(_, b)| b >= s);
        best.insert(pos, (i as u32, s));
        best.truncate(k);
        if best.len() == k {
            worst = best[k - 1].1;
        }
    }
    best
}

/// The best `k` of each row of a `[rows, n]` score matrix (see [`top_k_row`]), rows split
/// across the CPU's threads.
pub fn top_k_host(scores: &[f32], n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    let rows = scores.len() / n.max(1);
    let threads = rayon::current_num_threads().min(rows).max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = scores.chunks(per * n).map(|block| s.spawn(move || block.chunks(n).map(|row| top_k_row(row, k)).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("top-k thread")).collect()
    })
}

/// Ids from `--users`/`--items`: `all`, a file with one id per line, or `id,id,...`.
fn id_list(spec: &str, flag: &str) -> Result<Vec<String>> {
    let path = Path::new(spec);
    let raw: Vec<String> = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("{flag} {}", path.display()))?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        spec.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    };
    let mut seen = HashSet::new();
    let ids: Vec<String> = raw.into_iter().filter(|id| seen.insert(id.clone())).collect();
    if ids.is_empty() {
        let what = if path.is_file() { format!("{} has no ids", path.display()) } else { format!("{spec:?} names no ids") };
        bail!("{flag}: {what}; give `all`, a file with one id per line, or id,id,...");
    }
    Ok(ids)
}

/// Up to five ids for a message.
fn examples(ids: &[&str]) -> String {
    let mut s: Vec<String> = ids.iter().take(5).map(|i| format!("{i:?}")).collect();
    if ids.len() > 5 {
        s.push("…".into());
    }
    s.join(", ")
}

/// One requested user: a dense id, a user the checkpoint has never seen scored from its
/// features (`--user-features`; a dense id past the checkpoint's users), or a raw id the
/// checkpoint has never seen.
enum Target {
    Known(u32),
    Features(u32, String),
    Unknown(String),
}

/// Scores users against the catalogue on the device, masks, and selects the top k per user.
pub struct Scorer<'a> {
    model: &'a Ncf,
    /// Each user's items already seen: training and validation (masked unless `include_seen`).
    train: &'a UserItems,
    side: ItemSide,
    device: &'a Device,
    /// `[1, n_items]`: 0 for candidate items, -inf for the rest (`--items`).
    restrict: Option<Tensor<2>>,
    include_seen: bool,
    host_top_k: bool,
    k: usize,
    /// Users per device call.
    pub chunk: usize,
}

impl<'a> Scorer<'a> {
    pub fn new(model: &'a Ncf, train: &'a UserItems, device: &'a Device, allowed: Option<&[bool]>, include_seen: bool, host_top_k: bool, k: usize) -> Self {
        let n = model.n_items();
        // Memory stays bounded by the chunk whatever the number of users.
        let budget = if host_top_k { HOST_SCORE_FLOATS } else { DEVICE_SCORE_FLOATS };
        let chunk = match model.head.mlp.first().map(|l| l.weight.val().dims()[1]) {
            Some(width) => (MLP_FLOATS / (n * width).max(1)).clamp(1, 4096),
            None => (budget / n.max(1)).clamp(MIN_CHUNK, 4096),
        };
        let restrict = allowed.map(|a| {
            let bias: Vec<f32> = a.iter().map(|&ok| if ok { 0.0 } else { f32::NEG_INFINITY }).collect();
            Tensor::<2>::from_data(TensorData::new(bias, [1, n]), device)
        });
        Self { model, train, side: model.item_side(), device, restrict, include_seen, host_top_k, k, chunk }
    }

    /// The masked `[users, n_items]` scores of `users` (`None` for no users), left on the device.
    pub fn scores(&self, users: &[u32]) -> Option<Tensor<2>> {
        let (c, n, device) = (users.len(), self.model.n_items(), self.device);
        if c == 0 {
            return None;
        }
        let u = Tensor::<1, Int>::from_data(TensorData::new(users.iter().map(|&u| u as i32).collect::<Vec<_>>(), [c]), device);
        let mut scores = self.model.score_all(u, &self.side);
        if let Some(r) = &self.restrict {
            scores = scores + r.clone();
        }
        if !self.include_seen {
            // Users past the training table (scored from features) have seen nothing.
            let seen = |user: u32| if (user as usize) < self.train.n_users() { self.train.items(user) } else { &[] };
            let flat: Vec<i32> = users.iter().enumerate().flat_map(|(r, &user)| seen(user).iter().map(move |&i| (r * n) as i32 + i as i32)).collect();
            if !flat.is_empty() {
                let m = flat.len();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(flat, [m]), device);
                let mask = Tensor::<1>::full([m], f32::NEG_INFINITY, device);
                scores = ncf_model::scatter::select_assign(scores.reshape([c * n]), 0, idx, mask, IndexingUpdateOp::Add).reshape([c, n]);
            }
        }
        Some(scores)
    }

    /// The top-k lists of a `scores` matrix; `threaded`: split a host selection across cores.
    pub fn select(&self, scores: Tensor<2>, threaded: bool) -> Vec<Vec<(u32, f32)>> {
        let n = self.model.n_items();
        if self.host_top_k {
            // Host memory already: no copy, and a partial selection beats flex's full-sort topk.
            host::with_f32(scores, |data| if threaded { top_k_host(data, n, self.k) } else { data.chunks(n).map(|row| top_k_row(row, self.k)).collect() })
        } else {
            // Device top-k: two reads per chunk of users, k values each.
            let (vals, idx) = scores.topk_with_indices(self.k, 1);
            let (vals, idx) = (host::read_f32(vals), host::read_i64(idx));
            vals.chunks(self.k)
                .zip(idx.chunks(self.k))
                // Rows with fewer than k unmasked items come back padded (index -1 on wgpu).
                .map(|(v, i)| v.iter().zip(i).filter(|(s, i)| **s > f32::NEG_INFINITY && (0..n as i64).contains(i)).map(|(&s, &i)| (i as u32, s)).collect())
                .collect()
        }
    }
}

/// Joins item metadata columns to exported rows.
struct Metadata {
    table: KeyedTable,
    names: Vec<String>,
    missing: HashSet<u32>,
}

fn load_metadata(job: &RecommendJob) -> Result<Option<Metadata>> {
    let Some(path) = &job.item_metadata else {
        if job.item_key.is_some() || job.item_columns.is_some() {
            bail!("--item-key and --item-columns need --item-metadata FILE");
        }
        return Ok(None);
    };
    let keep = job.item_columns.clone().unwrap_or_default();
    let table = ncf_datasets::table::read_keyed(path, job.item_key.as_ref(), &keep).with_context(|| "reading --item-metadata")?;
    let fixed = ["user", "rank", "item", "score", "source"];
    let names = table.names.iter().map(|n| if fixed.contains(&n.as_str()) { format!("meta_{n}") } else { n.clone() }).collect();
    Ok(Some(Metadata { table, names, missing: HashSet::new() }))
}

/// Candidate items from `--items`, as a mask over the catalogue.
fn allowed_items(spec: &str, items: &IdMap) -> Result<Vec<bool>> {
    let ids = id_list(spec, "--items")?;
    let mut allowed = vec![false; items.len()];
    let unknown: Vec<&str> = ids.iter().filter(|id| items.get(id).map(|i| allowed[i as usize] = true).is_none()).map(String::as_str).collect();
    if unknown.len() == ids.len() {
        bail!("--items: none of the {} items is in the checkpoint (e.g. {})", ids.len(), examples(&unknown));
    }
    if !unknown.is_empty() {
        eprintln!("warning: --items: {} of {} items are not in the checkpoint and are ignored (e.g. {})", unknown.len(), ids.len(), examples(&unknown));
    }
    Ok(allowed)
}

/// What `ncf recommend` exports: the checkpoint, the output, the users and items, and what to do
/// with users the checkpoint has never seen.
#[derive(Debug, Clone)]
pub struct RecommendJob {
    /// Run directory (its best/) or checkpoint directory.
    pub checkpoint: PathBuf,
    /// Output file (with `shard`: the directory of the parts).
    pub out: PathBuf,
    pub format: OutFormat,
    /// Replace `out` even when it is not an ncf export with these columns.
    pub force: bool,
    /// `all`, a file with one raw user id per line, or id,id,...
    pub users: String,
    /// Items per user (at least 1).
    pub top_n: usize,
    /// Only the users of this shard, by a hash of the raw user id.
    pub shard: Option<Shard>,
    /// Keep items the user had in training or validation.
    pub include_seen: bool,
    /// Only these items: a file with one raw item id per line, or id,id,...
    pub items: Option<String>,
    pub unknown_users: UnknownUsers,
    /// Attributes of users the checkpoint has never seen, scored from them.
    pub user_features: Option<PathBuf>,
    /// Item table to join, its key column and the columns to join (default: all).
    pub item_metadata: Option<PathBuf>,
    pub item_key: Option<ColumnRef>,
    pub item_columns: Option<Vec<ColumnRef>>,
    pub backend: BackendName,
}

/// `ncf recommend --merge DIR`: checks a sharded export and prints its totals.
pub fn check_shards(dir: &Path) -> Result<()> {
    let m = shard::check(dir)?;
    say!(
        "{}: all {} shards present and consistent: {} users, {} rows, top-{} from {} ({} parts)",
        dir.display(),
        m.shards,
        m.users,
        m.rows,
        m.spec.top_n,
        m.spec.checkpoint,
        m.spec.format
    );
    Ok(())
}

pub fn run(job: &RecommendJob) -> Result<()> {
    let (checkpoint, out, format) = (&job.checkpoint, &job.out, job.format);
    // --users and --items name files or list ids; only files are inputs.
    fn file(spec: &str) -> &Path {
        Some(Path::new(spec)).filter(|p| p.is_file()).unwrap_or(Path::new(""))
    }
    let none = Path::new("");
    let inputs = [
        file(&job.users),
        file(job.items.as_deref().unwrap_or("")),
        job.item_metadata.as_deref().unwrap_or(none),
        job.user_features.as_deref().unwrap_or(none),
    ];
    output::refuse_inputs(out, &inputs)?;
    let selected = backend::select(job.backend)?;
    say!("{}", selected.line());
    let device = &selected.device;
    let ck = checkpoint::load(checkpoint, device)?;
    // What every shard of one export must have read: the same checkpoint.json (weights' CRCs).
    let ck_hash = job.shard.map(|_| shard::checkpoint_hash(&checkpoint::resolve_dir(checkpoint))).transpose()?;
    let n_items = ck.meta.n_items;
    let k = job.top_n.min(n_items);

    let all = job.users.eq_ignore_ascii_case("all");
    let targets: Vec<Target> = if all {
        (0..ck.meta.n_users as u32).map(Target::Known).collect()
    } else {
        id_list(&job.users, "--users")?
            .into_iter()
            .map(|raw| match ck.users.get(&raw) {
                Some(u) => Target::Known(u),
                None => Target::Unknown(raw),
            })
            .collect()
    };
    // A shard keeps its users alone (known or not), by their raw ids.
    let mut targets: Vec<Target> = match job.shard {
        Some(shard) => targets
            .into_iter()
            .filter(|t| {
                shard.holds(match t {
                    Target::Known(u) => ck.users.raw(*u),
                    Target::Features(_, raw) | Target::Unknown(raw) => raw,
                })
            })
            .collect(),
        None => targets,
    };
    let unknown_of =
        |targets: &[Target]| -> Vec<String> { targets.iter().filter_map(|t| if let Target::Unknown(r) = t { Some(r.clone()) } else { None }).collect() };
    // New users with a line in --user-features are scored from their features.
    let features = match &job.user_features {
        None => ck.features.clone(),
        Some(path) => {
            let unknown = unknown_of(&targets);
            let raw: Vec<&str> = unknown.iter().map(String::as_str).collect();
            let (features, dense) = ck.new_users_from(path, &raw)?;
            for t in targets.iter_mut() {
                if let Target::Unknown(raw) = t
                    && let Some(&u) = dense.get(raw.as_str())
                {
                    *t = Target::Features(u, std::mem::take(raw));
                }
            }
            features
        }
    };
    let unknown = unknown_of(&targets);
    let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
    if !unknown.is_empty() {
        let from = if Path::new(&job.users).is_file() { format!("{}: ", job.users) } else { String::new() };
        let head = format!("{from}{} of {} requested users are not in the checkpoint (e.g. {})", unknown.len(), targets.len(), examples(&unknown));
        match job.unknown_users {
            UnknownUsers::Error => bail!("{head}; pass --unknown-users skip or popular to export the others"),
            UnknownUsers::Skip if unknown.len() == targets.len() => bail!("{head}: nothing to recommend"),
            UnknownUsers::Skip => eprintln!("warning: {head}; skipped (--unknown-users skip)"),
            UnknownUsers::Popular => eprintln!("warning: {head}; they get the most popular training items, flagged source=popularity"),
        }
    }
    let allowed = job.items.as_deref().map(|s| allowed_items(s, &ck.items)).transpose()?;
    let mut metadata = load_metadata(job)?;
    let popular: Vec<(u32, f32)> = {
        let pop: Vec<f32> =
            ck.popularity.iter().enumerate().map(|(i, &c)| if allowed.as_ref().is_none_or(|a| a[i]) { c as f32 } else { f32::NEG_INFINITY }).collect();
        top_k_row(&pop, k)
    };

    let with_source = !all;
    let mut columns = vec![("user".to_owned(), Kind::Str), ("rank".into(), Kind::U32), ("item".into(), Kind::Str), ("score".into(), Kind::F32)];
    if with_source {
        columns.push(("source".into(), Kind::Str));
    }
    if let Some(m) = &metadata {
        columns.extend(m.names.iter().map(|n| (n.clone(), Kind::Str)));
    }
    let seen = ck.seen();
    let model = ck.scoring_model_with(&features);
    let scorer = Scorer::new(&model, &seen, device, allowed.as_deref(), job.include_seen, selected.host_memory(), k);
    // A shard writes its part into the claimed directory, replacing its own earlier part.
    let ext = match format {
        OutFormat::Csv => "csv",
        OutFormat::Parquet => "parquet",
        OutFormat::Jsonl => "jsonl",
    };
    let part = match job.shard {
        Some(shard) => {
            shard::claim_dir(out, job.force)?;
            shard::part_path(out, shard, ext)
        }
        None => out.clone(),
    };
    let mut export = Export::create(&part, format, &columns, &inputs, job.force || job.shard.is_some())?;
    let bar = Progress::users(targets.len());
    let mut users_out = 0usize;
    let blocks: Vec<&[Target]> = targets.chunks(scorer.chunk).collect();
    let known_of = |block: &[Target]| -> Vec<u32> {
        block
            .iter()
            .filter_map(|t| match t {
                Target::Known(u) | Target::Features(u, _) => Some(*u),
                Target::Unknown(_) => None,
            })
            .collect()
    };
    // The output rows of one block of requested users, in request order.
    let mut batch_of = |block: &[Target], lists: Vec<Vec<(u32, f32)>>| -> Vec<Values> {
        let mut scored = lists.into_iter();
        let (mut user, mut rank, mut item, mut score, mut source) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut item_ids: Vec<u32> = Vec::new();
        for t in block {
            let (raw, rows, src) = match t {
                Target::Known(u) => (ck.users.raw(*u), scored.next().expect("one list per known user"), "model"),
                Target::Features(_, raw) => (raw.as_str(), scored.next().expect("one list per user with features"), "features"),
                Target::Unknown(_) if job.unknown_users == UnknownUsers::Skip => continue,
                Target::Unknown(raw) => (raw.as_str(), popular.clone(), "popularity"),
            };
            users_out += 1;
            for (r, (i, s)) in rows.into_iter().enumerate() {
                user.push(Some(raw.to_owned()));
                rank.push(r as u32 + 1);
                item.push(Some(ck.items.raw(i).to_owned()));
                item_ids.push(i);
                score.push(s);
                source.push(Some(src.to_owned()));
            }
        }
        let mut batch = vec![Values::Str(user), Values::U32(rank), Values::Str(item), Values::F32(score)];
        if with_source {
            batch.push(Values::Str(source));
        }
        if let Some(m) = metadata.as_mut() {
            let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(item_ids.len()); m.names.len()];
            for &i in &item_ids {
                match m.table.get(ck.items.raw(i)) {
                    Some(row) => cols.iter_mut().zip(row).for_each(|(c, v)| c.push(v.clone())),
                    None => {
                        m.missing.insert(i);
                        cols.iter_mut().for_each(|c| c.push(None));
                    }
                }
            }
            batch.extend(cols.into_iter().map(Values::Str));
        }
        batch
    };
    // Two stages: a second thread scores chunk i+1 on the device while this one selects the
    // top-k of chunk i and writes it (on the CPU the two run on different cores). The channel
    // holds one chunk, so memory stays bounded by a few chunks.
    let export = std::thread::scope(|s| -> Result<Export> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Tensor<2>>>(1);
        let (scorer, blocks) = (&scorer, &blocks);
        s.spawn(move || {
            for block in blocks {
                if tx.send(scorer.scores(&known_of(block))).is_err() {
                    break; // the writer stopped on an error
                }
            }
        });
        for (block, scores) in blocks.iter().zip(rx) {
            let lists = scores.map_or_else(Vec::new, |t| scorer.select(t, false));
            export.write(&batch_of(block, lists))?;
            bar.inc(block.len() as u64);
        }
        Ok(export)
    })?;
    bar.finish_and_clear();
    let rows = export.rows();
    export.finish()?;
    if let Some(shard) = job.shard {
        let spec = shard::ExportSpec {
            checkpoint_hash: ck_hash.clone().unwrap_or_default(),
            checkpoint: checkpoint.display().to_string(),
            top_n: job.top_n,
            include_seen: job.include_seen,
            users: job.users.clone(),
            items: job.items.clone(),
            columns: columns.iter().map(|c| c.0.clone()).collect(),
            format: ext.to_owned(),
        };
        shard::write_manifest(out, shard, spec, &part, rows, users_out)?;
    }
    if let Some(m) = &metadata
        && !m.missing.is_empty()
    {
        eprintln!("warning: {} recommended items have no row in --item-metadata (their columns are empty)", m.missing.len());
    }
    let secs = bar.elapsed().as_secs_f64();
    let shard = job.shard.map_or(String::new(), |s| format!(" (shard {} of {})", s.index, s.count));
    say!("wrote top-{k} for {users_out} users{shard} ({rows} rows) to {} in {secs:.1}s ({:.0} users/s)", part.display(), users_out as f64 / secs.max(1e-9));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_top_k_orders_and_skips_masked() {
        let s = [0.1, 0.9, f32::NEG_INFINITY, 0.9, 0.5, /* row 2 */ 1.0, 2.0, 3.0, 4.0, 5.0];
        let top = top_k_host(&s, 5, 3);
        assert_eq!(top[0], vec![(1, 0.9), (3, 0.9), (4, 0.5)]);
        assert_eq!(top[1], vec![(4, 5.0), (3, 4.0), (2, 3.0)]);
        let all = top_k_host(&s[..5], 5, 10);
        assert_eq!(all[0].len(), 4);
        assert_eq!(top_k_row(&[f32::NAN, 1.0, f32::NEG_INFINITY], 2), vec![(1, 1.0)]);
    }

    #[test]
    fn insertion_and_partial_sort_paths_agree_with_a_full_sort() {
        let mut x = 12345u64;
        let row: Vec<f32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = ((x >> 40) % 200) as f32; // many ties
                if v < 20.0 { f32::NEG_INFINITY } else { v }
            })
            .collect();
        let mut want: Vec<(u32, f32)> = row.iter().enumerate().filter(|(_, s)| s.is_finite()).map(|(i, &s)| (i as u32, s)).collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [1, 10, SMALL_K, SMALL_K + 1, 300] {
            assert_eq!(top_k_row(&row, k), want[..k].to_vec(), "k = {k}");
        }
        let rows: Vec<f32> = row.iter().chain(&row).copied().collect();
        assert_eq!(top_k_host(&rows, row.len(), 10), vec![want[..10].to_vec(), want[..10].to_vec()]);
    }
}
