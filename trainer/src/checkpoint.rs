//! Checkpoint directories: self-contained, written atomically (temp dir + rename).
//!
//! ```text
//! DIR/checkpoint.json   format version, model kind, sizes, epoch, metrics, CRC-32 of each
//!                       safetensors file (written last)
//! DIR/config.toml       the resolved run configuration
//! DIR/model.safetensors weights (burn-store; PyTorch can read it)
//! DIR/train.safetensors each user's training and test items (CSR), with a validation split its
//!                       items too (`valid_offsets`, `valid_items`), item popularity, the raw
//!                       user and item ids (bytes, in dense-id order); with a given split's
//!                       imported .test.negative, its candidates (`eval_users` `[rows]`,
//!                       `eval_items` `[rows, 1 + negatives]`, test item first)
//! DIR/optim.safetensors optimizer state (last/ only): moments, per-row last-update steps
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use ncf_datasets::{EntityFeatures, FeatureVocab, IdMap, SampledCandidates, SideFeatures, UserItems};
use ncf_model::{Ncf, Optimizer};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::features::RunFeatures;
use crate::history::EpochRecord;
use crate::host;
use crate::output;

/// Bumped whenever the directory layout or meaning of a file changes.
/// 2: `train.safetensors` also holds the test split (`test_offsets`, `test_items`); `checkpoint.json`
/// the metrics history and optimizer step; `optim.safetensors` (in `last/`) the optimizer state.
/// 3: the raw id maps move from `users.txt`/`items.txt` (one id a line, so no id could hold a line
/// break) into `train.safetensors` as bytes (`user_ids` with end offsets `user_id_ends`, likewise
/// for items), which hold any id.
/// 4: `train.safetensors` may hold the validation split (`valid_offsets`, `valid_items`), which
/// `recommend` and `evaluate` mask like training items; the history's test metrics may be null
/// (epochs not evaluated) and gain validation metrics. Format 3 (no validation split) still loads.
/// 5: side features: `checkpoint.json` may hold each side's feature encoding (`user_features`,
/// `item_features`), `model.safetensors` the feature tables, `train.safetensors` each entity's
/// feature rows (`user_feature_offsets` `[n + 1]`, `user_feature_rows`, `user_feature_weights`;
/// likewise for items). Format 4 (no features) still loads.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format this ncf still reads.
const OLDEST_READ: u32 = 2;

/// `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format_version: u32,
    pub model: String,
    pub n_users: usize,
    pub n_items: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Metrics of that epoch, named like `hr@10`.
    pub metrics: HashMap<String, f64>,
    /// Every epoch's metrics so far (what `metrics.csv` holds), so a resumed run continues it.
    pub history: Vec<EpochRecord>,
    /// Optimizer steps taken (Adam's bias correction continues from here on resume).
    pub optim_step: u64,
    /// CRC-32 of each safetensors file, checked on load: a flipped bit in the weights is
    /// refused instead of loaded. Filled in by [`save`]; absent in checkpoints before it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checksums: std::collections::BTreeMap<String, u32>,
    /// Each side's feature encoding, so entities the run never saw encode the same way. Filled
    /// in by [`save`] from [`Saved::features`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_features: Option<FeatureVocab>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_features: Option<FeatureVocab>,
}

/// The CRC-32 of a file.
fn crc32(path: &Path) -> Result<u32> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    Ok(crc32fast::hash(&bytes))
}

/// Everything `recommend` needs from a run.
pub struct Checkpoint {
    pub meta: Meta,
    pub config: RunConfig,
    pub model: Ncf,
    pub train: UserItems,
    /// The run's validation split (`None`: the run had none, e.g. `train.select_on = "test"`).
    pub valid: Option<UserItems>,
    /// The run's test split, so `ncf evaluate` can reproduce its metrics.
    pub test: UserItems,
    /// Training users per item.
    pub popularity: Vec<u32>,
    pub users: IdMap,
    pub items: IdMap,
    /// Sampled-evaluation candidates imported with a given split (`split.negatives_path`), which
    /// cannot be redrawn from the seed; `None` when the run drew its own.
    pub candidates: Option<SampledCandidates>,
    /// The run's side features (encodings and every user's and item's feature rows).
    pub features: RunFeatures,
}

impl Checkpoint {
    /// Each user's items known before test: training and validation items, which `recommend`
    /// leaves out by default and test ranking masks.
    pub fn seen(&self) -> UserItems {
        self.train.union_with(self.valid.as_ref())
    }

    /// Whether `ncf score` writes the sigmoid of the model output (a probability: the model was
    /// trained with BCE) rather than the raw output (BPR, softmax, CCL: a ranking score).
    pub fn scores_are_probabilities(&self) -> bool {
        // EASE is fitted in closed form, not by the configured loss.
        self.config.train.loss == ncf_model::LossKind::Bce && self.config.model.kind != ncf_model::ModelKind::Ease
    }

    /// The model as `recommend`, `score` and `evaluate` score with it: the users' training
    /// histories folded into their rows when the model mixes them in (`model.history`).
    pub fn scoring_model(&self) -> Ncf {
        self.scoring_model_with(&self.features)
    }

    /// The run's features with the users of `raw` that have a line in `path` appended
    /// ([`RunFeatures::with_new_users`], the run's key column), and each such user's dense id
    /// in them (after the checkpoint's users); prints how many of `raw` were found.
    pub fn new_users_from(&self, path: &Path, raw: &[&str]) -> Result<(RunFeatures, HashMap<String, u32>)> {
        let (features, found) = self.features.with_new_users(path, self.config.features.user.key.as_deref(), raw)?;
        let dense: HashMap<String, u32> = found.into_iter().enumerate().map(|(k, raw)| (raw, (self.meta.n_users + k) as u32)).collect();
        say!("--user-features: {} of {} users new to the checkpoint are scored from their features", dense.len(), raw.len());
        Ok((features, dense))
    }

    /// [`Checkpoint::scoring_model`] with `features` in place of the run's: the run's own, or
    /// those with new users appended ([`RunFeatures::with_new_users`]), who get rows from their
    /// features alone and no history.
    pub fn scoring_model_with(&self, features: &RunFeatures) -> Ncf {
        let model = features.compose(&self.model);
        let mut offsets = self.train.offsets().to_vec();
        let end = *offsets.last().expect("CSR offsets start at 0");
        offsets.resize(model.n_users() + 1, end);
        model.fold_history(&offsets, self.train.all_items())
    }
}

/// What a run saves besides the model.
pub struct Saved<'a> {
    pub meta: &'a Meta,
    pub config: &'a RunConfig,
    pub model: &'a Ncf,
    pub train: &'a UserItems,
    pub valid: Option<&'a UserItems>,
    pub test: &'a UserItems,
    pub users: &'a IdMap,
    pub items: &'a IdMap,
    /// Optimizer state, for checkpoints a run can resume from.
    pub optim: Option<&'a Optimizer>,
    /// Imported evaluation candidates to keep with the run (see [`Checkpoint::candidates`]).
    pub candidates: Option<&'a SampledCandidates>,
    pub features: &'a RunFeatures,
}

/// Dense ids as the `I32` values safetensors stores them in.
fn i32_bytes(ids: &[u32]) -> Vec<u8> {
    bytes(&ids.iter().map(|&i| i as i32).collect::<Vec<i32>>())
}

/// A number a safetensors tensor holds, written little-endian as the format requires.
pub(crate) trait LeBytes: Copy {
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! le_bytes {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le_bytes!(f32, i32, i64, u32);

/// Values as the little-endian bytes a safetensors tensor holds.
pub(crate) fn bytes<T: LeBytes>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(v));
    v.iter().for_each(|&x| x.put(&mut out));
    out
}

/// A map's raw ids as one byte string and each id's end offset (little-endian i64).
fn id_bytes(map: &IdMap) -> (Vec<u8>, Vec<u8>) {
    let mut all = Vec::new();
    let mut ends = Vec::with_capacity(map.len());
    for id in map.raw_ids() {
        all.extend_from_slice(id.as_bytes());
        ends.push(all.len() as i64);
    }
    (all, bytes(&ends))
}

/// Writes `saved` into `dir`, replacing any previous checkpoint there only once complete: a crash
/// at any moment leaves the old checkpoint or the new one at `dir` (see [`output::replace_dir`]).
///
/// `twin`: a checkpoint just written from the same model and split (the run's best/ of this
/// epoch, beside its last/). Its weights and split files are hard-linked instead of written again
/// (an EASE fit's B at 26k items is 2.8 GB); written where linking fails. Checkpoint files are
/// never changed in place, only replaced whole, so the two directories cannot drift apart.
pub fn save(dir: &Path, saved: &Saved, twin: Option<&Path>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    output::sweep_leftovers(dir);
    let tmp = output::tmp_path(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // The twin's files linked here, with their checksums (read from its checkpoint.json).
    let linked: std::collections::BTreeMap<String, u32> = twin
        .and_then(|t| {
            let meta: Meta = serde_json::from_str(&std::fs::read_to_string(t.join("checkpoint.json")).ok()?).ok()?;
            Some(
                ["model.safetensors", "train.safetensors"]
                    .into_iter()
                    .filter_map(|name| {
                        let crc = *meta.checksums.get(name)?;
                        std::fs::hard_link(t.join(name), tmp.join(name)).ok()?;
                        Some((name.to_owned(), crc))
                    })
                    .collect(),
            )
        })
        .unwrap_or_default();
    let write =
        |file: &str, data: &[u8]| -> Result<()> { std::fs::write(tmp.join(file), data).with_context(|| format!("writing {}", tmp.join(file).display())) };
    write("config.toml", saved.config.to_toml().as_bytes())?;
    if !linked.contains_key("train.safetensors") {
        write_split(&tmp.join("train.safetensors"), saved)?;
    }
    if let Some(optim) = saved.optim {
        let state: Vec<(String, Vec<u8>, usize)> = optim
            .state_tensors()
            .into_iter()
            .map(|(name, t)| {
                let v = host::read_f32(t);
                (name, bytes(&v), v.len())
            })
            .collect();
        let views = state.iter().map(|(name, b, n)| Ok((name.clone(), TensorView::new(Dtype::F32, vec![*n], b)?))).collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, &tmp.join("optim.safetensors"))?;
    }
    if !linked.contains_key("model.safetensors") {
        saved.model.save_into(&mut SafetensorsStore::from_file(tmp.join("model.safetensors"))).map_err(|e| anyhow::anyhow!("saving weights: {e}"))?;
    }
    let mut meta = saved.meta.clone();
    meta.user_features = saved.features.user.as_ref().map(|f| f.vocab.clone());
    meta.item_features = saved.features.item.as_ref().map(|f| f.vocab.clone());
    for name in ["model.safetensors", "train.safetensors", "optim.safetensors"] {
        let crc = match linked.get(name) {
            Some(&crc) => crc,
            None if tmp.join(name).exists() => crc32(&tmp.join(name))?,
            None => continue,
        };
        meta.checksums.insert(name.to_owned(), crc);
    }
    write("checkpoint.json", serde_json::to_string_pretty(&meta)?.as_bytes())?;
    output::replace_dir(&tmp, dir, |d| d.join("checkpoint.json").exists())
}

/// `train.safetensors`: the id maps, each user's training, validation and test items, item
/// popularity, imported candidates and the feature rows of `saved`.
fn write_split(path: &Path, saved: &Saved) -> Result<()> {
    let csr = |t: &UserItems| -> (Vec<u8>, Vec<u8>) {
        let offsets: Vec<i64> = t.offsets().iter().map(|&o| o as i64).collect();
        (bytes(&offsets), i32_bytes(t.all_items()))
    };
    let ((ob, ib), (tob, tib)) = (csr(saved.train), csr(saved.test));
    let valid = saved.valid.map(csr);
    let pop: Vec<i32> = saved.train.item_counts(saved.meta.n_items).iter().map(|&c| c as i32).collect();
    let pb = bytes(&pop);
    let candidates = saved.candidates.map(|c| (c, i32_bytes(&c.user), i32_bytes(&c.items)));
    let ((ub, ue), (ib2, ie)) = (id_bytes(saved.users), id_bytes(saved.items));
    let mut views = vec![
        ("user_ids", TensorView::new(Dtype::U8, vec![ub.len()], &ub)?),
        ("user_id_ends", TensorView::new(Dtype::I64, vec![ue.len() / 8], &ue)?),
        ("item_ids", TensorView::new(Dtype::U8, vec![ib2.len()], &ib2)?),
        ("item_id_ends", TensorView::new(Dtype::I64, vec![ie.len() / 8], &ie)?),
        ("offsets", TensorView::new(Dtype::I64, vec![ob.len() / 8], &ob)?),
        ("items", TensorView::new(Dtype::I32, vec![ib.len() / 4], &ib)?),
        ("test_offsets", TensorView::new(Dtype::I64, vec![tob.len() / 8], &tob)?),
        ("test_items", TensorView::new(Dtype::I32, vec![tib.len() / 4], &tib)?),
        ("popularity", TensorView::new(Dtype::I32, vec![pop.len()], &pb)?),
    ];
    if let Some((vob, vib)) = &valid {
        views.push(("valid_offsets", TensorView::new(Dtype::I64, vec![vob.len() / 8], vob)?));
        views.push(("valid_items", TensorView::new(Dtype::I32, vec![vib.len() / 4], vib)?));
    }
    if let Some((c, users, items)) = &candidates {
        views.push(("eval_users", TensorView::new(Dtype::I32, vec![c.rows()], users)?));
        views.push(("eval_items", TensorView::new(Dtype::I32, vec![c.rows(), c.width()], items)?));
    }
    // Each side's feature rows (CSR): name, type, bytes.
    let mut feature_parts: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
    for (side, f) in [("user", &saved.features.user), ("item", &saved.features.item)] {
        if let Some(f) = f {
            let e = &f.entities;
            feature_parts.push((format!("{side}_feature_offsets"), Dtype::I32, i32_bytes(&e.offsets)));
            feature_parts.push((format!("{side}_feature_rows"), Dtype::I32, i32_bytes(&e.rows)));
            feature_parts.push((format!("{side}_feature_weights"), Dtype::F32, bytes(&e.weights)));
        }
    }
    for (name, dtype, b) in &feature_parts {
        views.push((name, TensorView::new(*dtype, vec![b.len() / 4], b)?));
    }
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

/// The directory holding the weights: `RUN/best` when given a run, else `dir` itself.
pub fn resolve_dir(dir: &Path) -> PathBuf {
    if dir.join("best").join("checkpoint.json").exists() { dir.join("best") } else { dir.to_path_buf() }
}

/// Loads a checkpoint onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve_dir(dir);
    let file = |name: &str| dir.join(name);
    let meta_path = file("checkpoint.json");
    if !dir.exists() {
        bail!("{}: no such checkpoint directory (pass a run directory or its best/ or last/)", dir.display());
    }
    let text = std::fs::read_to_string(&meta_path).with_context(|| format!("{}: not a checkpoint (missing checkpoint.json)", dir.display()))?;
    // The version first, so a checkpoint of another format gets that message, not a parse error.
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: malformed", meta_path.display()))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if !version.is_some_and(|v| (OLDEST_READ as u64..=FORMAT_VERSION as u64).contains(&v)) {
        bail!(
            "{}: checkpoint format version {} but this ncf reads versions {OLDEST_READ} to {FORMAT_VERSION}; retrain or use a matching ncf",
            dir.display(),
            version.map_or("missing".to_owned(), |v| v.to_string())
        );
    }
    let meta: Meta = serde_json::from_value(value).with_context(|| format!("{}: malformed", meta_path.display()))?;
    verify_checksums(&dir, &meta)?;
    let config_text = std::fs::read_to_string(file("config.toml")).with_context(|| format!("{}", file("config.toml").display()))?;
    let config: RunConfig = toml::from_str(&config_text).with_context(|| format!("{}: malformed", file("config.toml").display()))?;

    let train_path = file("train.safetensors");
    let buf = std::fs::read(&train_path).with_context(|| format!("{}", train_path.display()))?;
    let st = SafeTensors::deserialize(&buf).with_context(|| format!("{}: corrupted", train_path.display()))?;
    let get = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
        let t = st.tensor(name).with_context(|| format!("{}: no tensor {name}", train_path.display()))?;
        if t.dtype() != dtype {
            bail!("{}: tensor {name} has type {:?}, expected {dtype:?}", train_path.display(), t.dtype());
        }
        Ok(t.data().to_vec())
    };
    let i32s =
        |name: &str| -> Result<Vec<u32>> { Ok(get(name, Dtype::I32)?.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()) };
    let csr = |offsets: &str, items: &str, what: &str| -> Result<UserItems> {
        let offsets: Vec<usize> = get(offsets, Dtype::I64)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
        UserItems::from_csr(offsets, i32s(items)?)
            .filter(|t| t.n_users() == meta.n_users && t.all_items().iter().all(|&i| (i as usize) < meta.n_items))
            .with_context(|| format!("{}: inconsistent {what} items", train_path.display()))
    };
    // Format 2 kept the ids as text lines beside the tensors.
    let text_ids = |name: &str| -> Result<Vec<String>> {
        let text = std::fs::read_to_string(file(name)).with_context(|| format!("{}", file(name).display()))?;
        Ok(text.lines().map(str::to_owned).collect())
    };
    let tensor_ids = |name: &str| -> Result<Vec<String>> {
        let all = get(&format!("{name}_ids"), Dtype::U8)?;
        let ends = get(&format!("{name}_id_ends"), Dtype::I64)?;
        let mut start = 0usize;
        ends.chunks_exact(8)
            .map(|c| {
                let end = i64::from_le_bytes(c.try_into().unwrap()) as usize;
                let id = all.get(start..end).and_then(|b| String::from_utf8(b.to_vec()).ok());
                start = end;
                id.with_context(|| format!("{}: corrupted {name} ids", train_path.display()))
            })
            .collect()
    };
    let ids = |name: &str, n: usize| -> Result<IdMap> {
        let (raw, from) = if meta.format_version == 2 {
            (text_ids(&format!("{name}s.txt"))?, file(&format!("{name}s.txt")))
        } else {
            (tensor_ids(name)?, train_path.clone())
        };
        if raw.len() != n {
            bail!("{}: {} {name} ids but the checkpoint has {n}", from.display(), raw.len());
        }
        Ok(IdMap::from_raw(raw))
    };
    let users = ids("user", meta.n_users)?;
    let items = ids("item", meta.n_items)?;
    let popularity = i32s("popularity")?;
    if popularity.len() != meta.n_items {
        bail!("{}: item popularity has the wrong length", train_path.display());
    }
    let train = csr("offsets", "items", "training")?;
    let test = csr("test_offsets", "test_items", "test")?;
    let valid = match st.tensor("valid_items") {
        Err(_) => None,
        Ok(_) => Some(csr("valid_offsets", "valid_items", "validation")?),
    };
    let candidates = match st.tensor("eval_items") {
        Err(_) => None,
        Ok(t) => {
            let (user, items) = (i32s("eval_users")?, i32s("eval_items")?);
            let width = t.shape().get(1).copied().unwrap_or(0);
            if width == 0
                || items.len() != user.len() * width
                || user.iter().any(|&u| u as usize >= meta.n_users)
                || items.iter().any(|&i| i as usize >= meta.n_items)
            {
                bail!("{}: inconsistent evaluation candidates", train_path.display());
            }
            Some(SampledCandidates { user, items, negatives: width - 1 })
        }
    };

    let f32s = |name: &str| -> Result<Vec<f32>> { Ok(get(name, Dtype::F32)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()) };
    let side = |vocab: &Option<FeatureVocab>, name: &str, n: usize| -> Result<Option<SideFeatures>> {
        let Some(vocab) = vocab else { return Ok(None) };
        let part = |p: &str| format!("{name}_feature_{p}");
        let entities = EntityFeatures { offsets: i32s(&part("offsets"))?, rows: i32s(&part("rows"))?, weights: f32s(&part("weights"))? };
        let consistent = entities.len() == n
            && entities.offsets.windows(2).all(|w| w[0] <= w[1])
            && entities.offsets.last().is_some_and(|&e| e as usize == entities.rows.len() && e as usize == entities.weights.len())
            && entities.rows.iter().all(|&r| r < vocab.rows);
        if !consistent {
            bail!("{}: inconsistent {name} feature rows", train_path.display());
        }
        Ok(Some(SideFeatures { vocab: vocab.clone(), entities }))
    };
    let features = RunFeatures { user: side(&meta.user_features, "user", meta.n_users)?, item: side(&meta.item_features, "item", meta.n_items)? };
    let mut model = features.init_model(&config, meta.n_users, meta.n_items, device);
    let weights = file("model.safetensors");
    // burn's apply panics on a shape mismatch: check names, shapes and sizes from the header first.
    check_weights(&weights, &model)?;
    let result = model
        .load_from(&mut SafetensorsStore::from_file(&weights))
        .map_err(|e| anyhow::anyhow!("{}: corrupted or unreadable weights: {e}", weights.display()))?;
    if !result.is_success() || !result.missing.is_empty() {
        bail!("{}: weights do not match the model in config.toml: {result}", weights.display());
    }
    Ok(Checkpoint { meta, config, model, train, valid, test, popularity, users, items, candidates, features })
}

/// Checks each file `meta` has a checksum of (`optim.safetensors` too, when present).
fn verify_checksums(dir: &Path, meta: &Meta) -> Result<()> {
    for (name, &want) in &meta.checksums {
        let path = dir.join(name);
        if !path.exists() && name == "optim.safetensors" {
            continue;
        }
        if crc32(&path)? != want {
            bail!("{}: corrupted (its checksum differs from the one in checkpoint.json); restore the file or retrain", path.display());
        }
    }
    Ok(())
}

/// Checks `model.safetensors` against the model built from `config.toml`: every parameter present
/// as f32 with the same shape, byte ranges inside the file, nothing truncated.
fn check_weights(path: &Path, model: &Ncf) -> Result<()> {
    use std::io::Read;
    let bad = |what: String| anyhow::anyhow!("{}: corrupted or unreadable weights: {what}", path.display());
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| bad(format!("header is not valid JSON ({e})")))?;
    let data_len = file_len - 8 - n;
    for t in model.collect(None, None, false) {
        let want: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let entry = header
            .get(&t.name)
            .ok_or_else(|| anyhow::anyhow!("{}: no tensor {:?}; the weights do not match the model in config.toml", path.display(), t.name))?;
        let shape: Option<Vec<u64>> = entry["shape"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        if shape.as_ref() != Some(&want) || entry["dtype"] != "F32" {
            bail!(
                "{}: tensor {:?} is {} {:?} but the model in config.toml needs F32 {want:?}",
                path.display(),
                t.name,
                entry["dtype"],
                shape.unwrap_or_default()
            );
        }
        let offsets = entry["data_offsets"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).collect::<Vec<_>>());
        let size = 4 * want.iter().product::<u64>();
        match offsets.as_deref() {
            Some(&[start, end]) if end >= start && end - start == size && end <= data_len => {}
            _ => return Err(bad(format!("tensor {:?} has bad or truncated data offsets", t.name))),
        }
    }
    Ok(())
}

/// The optimizer state saved beside `model` in checkpoint `dir` (a `last/`), on `device`.
pub fn load_optimizer(dir: &Path, ck: &Checkpoint, device: &Device) -> Result<Optimizer> {
    use burn::tensor::{Tensor, TensorData};
    let path = dir.join("optim.safetensors");
    let buf = std::fs::read(&path).with_context(|| format!("{}: no optimizer state to resume from", path.display()))?;
    let st = SafeTensors::deserialize(&buf).with_context(|| format!("{}: corrupted", path.display()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
            bail!("{}: tensor {name} is not a flat f32 tensor", path.display());
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let n = values.len();
        tensors.insert(name, Tensor::<1>::from_data(TensorData::new(values, [n]), device));
    }
    Optimizer::restore(ck.config.optim.clone(), ck.meta.optim_step, tensors, &ck.model).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
