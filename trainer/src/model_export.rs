//! `ncf export`: a checkpoint's scoring model for other tools. What is exported is the model as
//! `recommend` and `score` use it ([`Checkpoint::scoring_model`]: with `model.history`, each
//! user's training history already mixed into its user row). Both targets write a directory
//! through [`output::write_dir`] (a temporary directory first, then renamed into place).
//!
//! `--to torch`: a PyTorch state dict that `python/ncf_torch.py` rebuilds into an `nn.Module`.
//!
//! ```text
//! DIR/model.safetensors  the state dict: f32, PyTorch names and layouts (below)
//! DIR/config.json        model kind, sizes, activation, cosine, score transform, tensor shapes
//! DIR/user_ids.json      raw user ids in row order of the user tables (a JSON array of strings)
//! DIR/item_ids.json      raw item ids in row order of the item tables
//! ```
//!
//! Tensors, with n users, m items, f = `model.factors`, l = `model.layers` (burn keeps linear
//! weights as `[in, out]`; they are transposed to torch's `[out, in]`):
//!
//! ```text
//! gmf_user.weight [n, f]   gmf_item.weight [m, f]           GMF, NeuMF (nn.Embedding)
//! mf_user.weight  [n, f]   mf_item.weight  [m, f]           MF
//! user_bias.weight [n, 1]  item_bias.weight [m, 1]          MF without cosine
//! mlp_user.weight [n, l0/2]  mlp_item.weight [m, l0/2]      MLP, NeuMF
//! mlp.K.weight [l(K+1), lK]  mlp.K.bias [l(K+1)]            MLP, NeuMF (nn.ModuleList of nn.Linear, ReLU after each)
//! predict.weight [1, f | l_last | f + l_last]  predict.bias [1]   GMF | MLP | NeuMF (GMF part first)
//! ```
//!
//! `--to embeddings`: vectors for vector databases (Faiss, ...), one Parquet file per side.
//!
//! ```text
//! DIR/users.parquet  row (u32: the table row), id (raw id), then the vectors (list<f32>):
//! DIR/items.parquet    MF: vector, bias (no bias with cosine); GMF: vector;
//!                      NeuMF: gmf_vector, mlp_vector; MLP: mlp_vector
//! DIR/config.json    as for torch, plus how a score follows from the vectors (`score`) and,
//!                    for GMF, the output layer (`predict_weight`, `predict_bias`)
//! ```
//!
//! `vector`/`gmf_vector` are the factors as the score uses them: L2-normalised when the model
//! compares by cosine (`model.cosine`). MF: score = user.vector · item.vector + user.bias +
//! item.bias. GMF: score = Σ predict_weight ⊙ user.vector ⊙ item.vector + predict_bias. MLP and
//! NeuMF scores go through the MLP tower, which no dot product reproduces: their vectors are the
//! model's embeddings of each part, and scoring needs `--to torch`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::Tensor;
use clap::ValueEnum;
use ncf_datasets::{IdMap, ParquetSink};
use ncf_model::{COSINE_EPS, ModelKind, Ncf};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};

use crate::backend::{self, BackendName};
use crate::checkpoint::{self, Checkpoint};
use crate::export::{Kind, Values};
use crate::host;
use crate::output::{self, DirKind};

/// What `ncf export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A PyTorch state dict (safetensors), config.json and the raw ids, for python/ncf_torch.py.
    Torch,
    /// users.parquet and items.parquet: raw id, vectors and biases, for vector databases.
    Embeddings,
}

/// Version of the export layout (`format_version` in config.json): bumped when a name, a layout
/// or a meaning changes, so readers can refuse what they do not know.
pub const FORMAT_VERSION: u32 = 1;

/// The files of a torch export.
const TORCH_FILES: [&str; 5] = ["model.safetensors", "config.json", "user_ids.json", "item_ids.json", output::MARKER];
/// The files of an embeddings export.
const EMBEDDINGS_FILES: [&str; 4] = ["users.parquet", "items.parquet", "config.json", output::MARKER];
/// Rows per Parquet row group.
const PARQUET_ROWS: usize = 1 << 16;

/// A tensor on the host, row-major, under its export name.
struct Named {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Named {
    fn read<const D: usize>(name: impl Into<String>, tensor: Tensor<D>) -> Self {
        Self { name: name.into(), shape: tensor.dims().to_vec(), values: host::read_f32(tensor) }
    }
}

/// What `ncf export` writes, from which checkpoint, where.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// Run directory (its best/) or checkpoint directory.
    pub checkpoint: PathBuf,
    pub to: Target,
    /// Output directory.
    pub out: PathBuf,
    /// Write into `out` even when it is not an ncf export of this kind.
    pub force: bool,
    /// Backend the checkpoint loads on.
    pub backend: BackendName,
}

/// Runs `ncf export`: loads the checkpoint, then writes the export into `--out` once it may.
pub fn run(job: &ExportJob) -> Result<()> {
    let (kind, files) = match job.to {
        Target::Torch => (DirKind::TorchExport, &TORCH_FILES[..]),
        Target::Embeddings => (DirKind::EmbeddingsExport, &EMBEDDINGS_FILES[..]),
    };
    // The checkpoint is an input: --out may not be it (or its run) nor write over its files.
    let dir = checkpoint::resolve_dir(&job.checkpoint);
    let inputs: Vec<PathBuf> = [job.checkpoint.clone(), dir.clone()]
        .into_iter()
        .chain(["model.safetensors", "train.safetensors", "config.toml", "checkpoint.json"].map(|f| dir.join(f)))
        .collect();
    let selected = backend::select(job.backend)?;
    say!("{}", selected.line());
    let ck = checkpoint::load(&job.checkpoint, &selected.device)?;
    if ck.config.model.kind == ModelKind::Ease {
        anyhow::bail!(
            "{}: an EASE model has no user and item vectors to export (its scores are a user's history times an items × items matrix); \
             export its recommendations with `ncf recommend` or its scores with `ncf score`",
            job.checkpoint.display()
        );
    }
    output::claim_dir(&job.out, kind, files, &inputs.iter().map(|p| p.as_path()).collect::<Vec<_>>(), job.force)?;
    let model = ck.scoring_model();
    let written = match job.to {
        Target::Torch => write_torch(&job.out, &ck, &dir, &model)?,
        Target::Embeddings => write_embeddings(&job.out, &ck, &dir, &model)?,
    };
    say!(
        "wrote the {} of {} ({} users, {} items, epoch {}) to {}: {}",
        kind.name(),
        ck.config.model.kind.name(),
        ck.meta.n_users,
        ck.meta.n_items,
        ck.meta.epoch,
        job.out.display(),
        written.join(", ")
    );
    Ok(())
}

/// Columns `cols` of every row of `table`.
fn columns(table: Tensor<2>, cols: Range<usize>) -> Tensor<2> {
    let [n, _] = table.dims();
    table.slice([0..n, cols])
}

/// The scoring model as PyTorch names it (see the module docs), in the order of the docs.
fn torch_tensors(model: &Ncf) -> Vec<Named> {
    let head = &model.head;
    let l = head.layout;
    let (user, item) = (model.user.val(), model.item.val());
    let mut out = Vec::new();
    if l.gmf > 0 {
        let part = if l.kind == ModelKind::Mf { "mf" } else { "gmf" };
        out.push(Named::read(format!("{part}_user.weight"), columns(user.clone(), 0..l.gmf)));
        out.push(Named::read(format!("{part}_item.weight"), columns(item.clone(), 0..l.gmf)));
    }
    if l.kind == ModelKind::Mf && !head.cosine {
        out.push(Named::read("user_bias.weight", columns(user.clone(), l.gmf..l.gmf + 1)));
        out.push(Named::read("item_bias.weight", columns(item.clone(), l.gmf..l.gmf + 1)));
    }
    // A layer without a bias (none today) exports a zero one: the same function.
    let bias = |b: &Option<burn::module::Param<Tensor<1>>>, width: usize, like: &Tensor<2>| {
        b.as_ref().map_or_else(|| Tensor::<1>::zeros([width], &like.device()), |b| b.val())
    };
    if l.mlp > 0 {
        out.push(Named::read("mlp_user.weight", columns(user, l.gmf..l.gmf + l.mlp)));
        out.push(Named::read("mlp_item.weight", columns(item, l.gmf..l.gmf + l.mlp)));
        for (k, layer) in head.mlp.iter().enumerate() {
            let w = layer.weight.val();
            let [_, d_out] = w.dims();
            out.push(Named::read(format!("mlp.{k}.weight"), w.clone().transpose()));
            out.push(Named::read(format!("mlp.{k}.bias"), bias(&layer.bias, d_out, &w)));
        }
    }
    if let Some(o) = &head.output {
        let w = o.weight.val();
        out.push(Named::read("predict.weight", w.clone().transpose()));
        out.push(Named::read("predict.bias", bias(&o.bias, 1, &w)));
    }
    out
}

/// What every export's config.json says: the model, its sizes and how its output becomes what
/// `ncf score` writes.
fn base_config(ck: &Checkpoint, dir: &Path, model: &Ncf, format: &str) -> Value {
    let (config, l) = (&ck.config.model, model.head.layout);
    json!({
        "format": format,
        "format_version": FORMAT_VERSION,
        "model": l.kind.name(),
        "n_users": model.n_users(),
        "n_items": model.n_items(),
        "factors": l.gmf,
        "layers": if l.mlp > 0 { config.layers.clone() } else { Vec::new() },
        "activation": "relu",
        "cosine": model.head.cosine,
        "cosine_eps": COSINE_EPS,
        "score_transform": if ck.scores_are_probabilities() { "sigmoid" } else { "none" },
        "loss": ck.config.train.loss.name(),
        "history_folded": config.history,
        "epoch": ck.meta.epoch,
        "checkpoint": output::absolute(dir).display().to_string(),
        "ncf_version": env!("CARGO_PKG_VERSION"),
    })
}

/// `value` as JSON, indented when `pretty` (configs; id lists stay on one line).
fn write_json(path: &Path, value: &impl serde::Serialize, pretty: bool) -> Result<()> {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) }.context("encoding JSON")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// `--to torch`; returns the names of the files written.
fn write_torch(out: &Path, ck: &Checkpoint, dir: &Path, model: &Ncf) -> Result<Vec<&'static str>> {
    let tensors = torch_tensors(model);
    let mut config = base_config(ck, dir, model, "ncf-torch");
    config["tensors"] = tensors.iter().map(|t| (t.name.clone(), json!(t.shape))).collect::<serde_json::Map<_, _>>().into();
    output::write_dir(out, &TORCH_FILES, DirKind::TorchExport.name(), |tmp| {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| checkpoint::bytes(&t.values)).collect();
        let views =
            tensors.iter().zip(&bytes).map(|(t, b)| Ok((t.name.as_str(), TensorView::new(Dtype::F32, t.shape.clone(), b)?))).collect::<Result<Vec<_>>>()?;
        // `format: pt` is what safetensors' own torch writer records.
        let metadata = Some([("format".to_owned(), "pt".to_owned())].into());
        let path = tmp.join("model.safetensors");
        // Serialised in memory and written as any file (serialize_to_file makes it owner-only).
        let data = safetensors::serialize(views, metadata).with_context(|| format!("writing {}", path.display()))?;
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        write_json(&tmp.join("config.json"), &config, true)?;
        write_json(&tmp.join("user_ids.json"), &ck.users.raw_ids(), false)?;
        write_json(&tmp.join("item_ids.json"), &ck.items.raw_ids(), false)?;
        output::mark(tmp, DirKind::TorchExport)
    })?;
    Ok(TORCH_FILES[..4].to_vec())
}

/// One side's Parquet columns after `row` and `id` (see the module docs): name and values.
fn side_columns(model: &Ncf, table: Tensor<2>) -> Vec<(&'static str, Values)> {
    let head = &model.head;
    let l = head.layout;
    let list = |t: Tensor<2>| {
        let [_, width] = t.dims();
        Values::F32List { width, values: host::read_f32(t) }
    };
    let mut out = Vec::new();
    if l.gmf > 0 {
        let name = if l.kind == ModelKind::Neumf { "gmf_vector" } else { "vector" };
        out.push((name, list(head.factors(table.clone()))));
    }
    if l.kind == ModelKind::Mf && !head.cosine {
        out.push(("bias", Values::F32(host::read_f32(columns(table.clone(), l.gmf..l.gmf + 1)))));
    }
    if l.mlp > 0 {
        out.push(("mlp_vector", list(columns(table, l.gmf..l.gmf + l.mlp))));
    }
    out
}

/// Writes one side's table to `path`: `row`, `id`, then `columns`.
fn write_side(path: &Path, ids: &IdMap, columns: Vec<(&'static str, Values)>) -> Result<()> {
    let n = ids.len();
    let mut all = vec![("row", Values::U32((0..n as u32).collect())), ("id", Values::Str(ids.raw_ids().iter().cloned().map(Some).collect()))];
    all.extend(columns);
    let kinds: Vec<(String, Kind)> = all.iter().map(|(name, v)| (name.to_string(), v.kind())).collect();
    let file = std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    let mut sink = ParquetSink::new(file, path, &kinds)?;
    for start in (0..n).step_by(PARQUET_ROWS) {
        let rows = start..(start + PARQUET_ROWS).min(n);
        sink.write(&all.iter().map(|(_, v)| v.rows(rows.clone())).collect::<Vec<_>>())?;
    }
    sink.finish()?;
    Ok(())
}

/// How a score follows from the embeddings export's vectors, for its config.json.
fn score_formula(model: &Ncf) -> &'static str {
    match (model.head.layout.kind, model.head.cosine) {
        (ModelKind::Mf, false) => "dot(user.vector, item.vector) + user.bias + item.bias",
        (ModelKind::Mf, true) => "dot(user.vector, item.vector) (the vectors are L2-normalised: the cosine)",
        (ModelKind::Gmf, _) => "sum(predict_weight * user.vector * item.vector) + predict_bias",
        (ModelKind::Ease, _) => unreachable!("refused by run: EASE has no vectors to export"),
        (ModelKind::Mlp | ModelKind::Neumf, _) => {
            "not a dot product: the MLP tower combines both sides' mlp_vector (NeuMF adds the GMF part); score with --to torch"
        }
    }
}

/// `--to embeddings`; returns the names of the files written.
fn write_embeddings(out: &Path, ck: &Checkpoint, dir: &Path, model: &Ncf) -> Result<Vec<&'static str>> {
    let mut config = base_config(ck, dir, model, "ncf-embeddings");
    config["score"] = score_formula(model).into();
    if model.head.layout.kind == ModelKind::Gmf {
        let o = model.head.output.as_ref().expect("GMF has an output layer");
        config["predict_weight"] = host::read_f32(o.weight.val()).into();
        config["predict_bias"] = o.bias.as_ref().map_or(0.0, |b| host::read_f32(b.val())[0]).into();
    }
    let (users, items) = (side_columns(model, model.user.val()), side_columns(model, model.item.val()));
    config["columns"] = json!(["row", "id"].into_iter().chain(users.iter().map(|c| c.0)).collect::<Vec<_>>());
    output::write_dir(out, &EMBEDDINGS_FILES, DirKind::EmbeddingsExport.name(), |tmp| {
        write_side(&tmp.join("users.parquet"), &ck.users, users)?;
        write_side(&tmp.join("items.parquet"), &ck.items, items)?;
        write_json(&tmp.join("config.json"), &config, true)?;
        output::mark(tmp, DirKind::EmbeddingsExport)
    })?;
    Ok(EMBEDDINGS_FILES[..3].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use ncf_model::ModelConfig;

    fn shapes(t: &[Named]) -> Vec<(&str, &[usize])> {
        t.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect()
    }

    #[test]
    fn torch_tensors_have_pytorch_names_and_layouts() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Neumf, factors: 3, layers: vec![6, 5, 2], ..Default::default() };
        let model = Ncf::init(&cfg, 4, 7, 1, &d);
        let t = torch_tensors(&model);
        let want: [(&str, &[usize]); 10] = [
            ("gmf_user.weight", &[4, 3]),
            ("gmf_item.weight", &[7, 3]),
            ("mlp_user.weight", &[4, 3]),
            ("mlp_item.weight", &[7, 3]),
            ("mlp.0.weight", &[5, 6]),
            ("mlp.0.bias", &[5]),
            ("mlp.1.weight", &[2, 5]),
            ("mlp.1.bias", &[2]),
            ("predict.weight", &[1, 5]),
            ("predict.bias", &[1]),
        ];
        assert_eq!(shapes(&t), want);
        // torch's [out, in]: weight[o][i] is burn's weight[i][o].
        let burn = host::read_f32(model.head.mlp[0].weight.val());
        for (o, i) in (0..5).flat_map(|o| (0..6).map(move |i| (o, i))) {
            assert_eq!(t[4].values[o * 6 + i], burn[i * 5 + o]);
        }
        // The table columns split into the GMF and MLP parts.
        let user = host::read_f32(model.user.val());
        assert_eq!(t[0].values[3..6], user[6..9], "user 1's GMF factors");
        assert_eq!(t[2].values[3..6], user[9..12], "user 1's MLP embedding");

        let mf = |cosine| Ncf::init(&ModelConfig { kind: ModelKind::Mf, factors: 3, cosine, ..Default::default() }, 4, 7, 1, &d);
        let want: [(&str, &[usize]); 4] =
            [("mf_user.weight", &[4, 3]), ("mf_item.weight", &[7, 3]), ("user_bias.weight", &[4, 1]), ("item_bias.weight", &[7, 1])];
        assert_eq!(shapes(&torch_tensors(&mf(false))), want);
        assert_eq!(shapes(&torch_tensors(&mf(true))), want[..2], "cosine MF has no biases");
    }
}
