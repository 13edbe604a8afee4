//! `ncf recommend`: top-N items per user from a checkpoint, scored in chunks of users against the
//! whole catalogue with the user's training items masked, written as `user,rank,item,score`.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use ncf_datasets::UserItems;
use ncf_model::{ItemSide, Ncf};

use crate::backend;
use crate::checkpoint;
use crate::cli::RecommendArgs;
use crate::host;
use crate::progress::Progress;

/// Floats one scoring chunk may hold on the device (256 MiB).
const CHUNK_FLOATS: usize = 64 << 20;

/// The best `k` of each row of a `[rows, n]` score matrix: (item, score), best first, ties by
/// lower item id; masked (-inf) entries are dropped.
pub fn top_k_host(scores: &[f32], n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    scores
        .chunks(n)
        .map(|row| {
            let mut idx: Vec<u32> = (0..n as u32).filter(|&i| row[i as usize] > f32::NEG_INFINITY).collect();
            let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            let k = k.min(idx.len());
            if k > 0 && k < idx.len() {
                idx.select_nth_unstable_by(k - 1, cmp);
            }
            idx.truncate(k);
            idx.sort_unstable_by(cmp);
            idx.into_iter().map(|i| (i, row[i as usize])).collect()
        })
        .collect()
}

/// Users scored per device call so a chunk's `[users, n_items, width]` work fits [`CHUNK_FLOATS`].
pub fn users_per_chunk(n_items: usize, width: usize) -> usize {
    (CHUNK_FLOATS / (n_items * width).max(1)).clamp(1, 4096)
}

/// The top `k` (item, score) of each user in `ids` against the whole catalogue, best first, with
/// the user's `seen` items masked when given. `host_memory` backends select on the host (a partial
/// selection beats flex's full-sort topk); GPU backends run the device top-k and read back only it.
pub fn top_k_users(model: &Ncf, item_side: &ItemSide, ids: &[u32], seen: Option<&UserItems>, k: usize, host_memory: bool) -> Vec<Vec<(u32, f32)>> {
    let device = &model.user.val().device();
    let n_items = item_side.n_items();
    let c = ids.len();
    let u = Tensor::<1, Int>::from_data(TensorData::new(ids.iter().map(|&u| u as i32).collect::<Vec<_>>(), [c]), device);
    let mut scores = model.score_all(u, item_side);
    if let Some(seen) = seen {
        let flat: Vec<i32> = ids
            .iter()
            .enumerate()
            .flat_map(|(r, &user)| seen.items(user).iter().map(move |&i| (r * n_items) as i32 + i as i32))
            .collect();
        if !flat.is_empty() {
            let m = flat.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(flat, [m]), device);
            let mask = Tensor::<1>::full([m], f32::NEG_INFINITY, device);
            scores = scores.reshape([c * n_items]).select_assign(0, idx, mask, IndexingUpdateOp::Add).reshape([c, n_items]);
        }
    }
    if host_memory {
        top_k_host(&host::read_f32(scores), n_items, k)
    } else {
        let (vals, idx) = scores.topk_with_indices(k, 1);
        let vals = host::read_f32(vals);
        let idx = host::read_i64(idx);
        vals.chunks(k)
            .zip(idx.chunks(k))
            .map(|(v, i)| v.iter().zip(i).filter(|(s, _)| **s > f32::NEG_INFINITY).map(|(&s, &i)| (i as u32, s)).collect())
            .collect()
    }
}

pub fn run(args: &RecommendArgs) -> Result<()> {
    if args.top_n == 0 {
        bail!("--top-n must be at least 1");
    }
    let selected = backend::select(args.backend)?;
    println!("{}", selected.line());
    let device = &selected.device;
    let ck = checkpoint::load(&args.checkpoint, device)?;
    let n_items = ck.meta.n_items;
    let users: Vec<u32> = (0..ck.meta.n_users as u32).collect();
    let item_side = ck.model.item_side();
    let width = ck.config.model.layers.get(1).copied().filter(|_| ck.model.head.layout.mlp > 0).unwrap_or(1);
    let chunk = users_per_chunk(n_items, width);
    let k = args.top_n.min(n_items);

    let out = &args.out;
    let tmp = tmp_path(out);
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::new(file);
        writeln!(w, "user,rank,item,score")?;
        let bar = Progress::users(users.len());
        for ids in users.chunks(chunk) {
            let c = ids.len();
            let seen = (!args.include_seen).then_some(&ck.train);
            let rows = top_k_users(&ck.model, &item_side, ids, seen, k, selected.host_memory());
            for (&user, row) in ids.iter().zip(&rows) {
                let raw_user = ck.users.raw(user);
                for (rank, &(item, score)) in row.iter().enumerate() {
                    writeln!(w, "{},{},{},{}", csv_field(raw_user), rank + 1, csv_field(ck.items.raw(item)), score)?;
                }
            }
            bar.inc(c as u64);
        }
        bar.finish_and_clear();
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    println!("wrote top-{k} for {} users to {}", users.len(), out.display());
    Ok(())
}

fn tmp_path(out: &Path) -> std::path::PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Quotes a raw id for CSV when it needs it.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
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
    }
}
