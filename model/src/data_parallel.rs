//! Data-parallel training: one replica of the model and its optimizer per device, each batch
//! split across them, the gradients summed across devices, the same update applied on every one.
//!
//! A step of `B` samples on `k` devices:
//! 1. Every device gets the whole batch's packed buffer (its unique users and items are the
//!    union over the shards) and takes its shard of the samples: `B / k` of them, split on BPR
//!    group boundaries. It gathers *all* the batch's unique rows, so every device's row
//!    gradients are `[u, width]` and `[i, width]` in the same row order: the reduction stays
//!    row-sparse (it never sees the rest of the tables).
//! 2. Each device computes its shard's mean loss and gradients ([`crate::step::gradients`]),
//!    scales them by `shard / B` and packs them into one flat buffer (loss, user rows, item
//!    rows, head parameters): the sum over devices is then the gradient of the whole batch's
//!    mean loss, unequal shards included.
//! 3. One sum of that buffer across devices per step (see [`Reduce`]).
//! 4. Every replica applies the same summed gradient with its own optimizer
//!    ([`crate::step::apply_gradients`]): the same rows, the same Adam moments and per-row
//!    steps everywhere, so the replicas stay identical without broadcasting parameters.
//!
//! Shared negatives and history are exact: every device holds all the batch's item rows, and a
//! shard scores its own positives against every positive of the batch and every shared
//! negative ([`crate::step::SharedNegatives::others`]). Their per-row mean losses sum across
//! shards to the batch's; BPR over shared negatives, normalised by the batch's pair count, does
//! not ([`DataParallel::supports`]). Dropout masks are drawn per device, so with dropout the
//! replicas train like one device only in distribution. The single-device step's look-ahead
//! (the next batch's rows fetched during this step, the item update left running) is not used.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::loss::{LossConfig, LossKind};
use crate::ncf::Ncf;
use crate::optim::{HeadGradients, Moments, Optimizer, RowMoments};
use crate::rows;
use crate::step::{StepGradients, StepInput, apply_gradients, gradients};

/// How the per-device gradient buffers are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// burn's collective, `burn::tensor::distributed::all_reduce` with `ReduceOperation::Sum`:
    /// every device issues its reduction, then each is resolved. In burn 0.22.1 only CUDA has a
    /// transport (NCCL), between distinct GPUs; on flex and wgpu the call panics.
    Collective,
    /// burn's `Tensor::to_device`: the buffers are copied to the first device, summed there in
    /// device order and copied back, so every replica gets the same bits. For devices without a
    /// collective transport: wgpu (including two runtimes on one software adapter) and flex
    /// replicas on the one CPU device, which exist to test data-parallel training without GPUs.
    Transfer,
}

impl Reduce {
    /// The collective when every device is a distinct CUDA device, else the transfer.
    pub fn for_devices(devices: &[Device]) -> Self {
        let distinct = devices.iter().enumerate().all(|(k, d)| !devices[..k].contains(d));
        if devices.len() > 1 && distinct && devices.iter().all(on_cuda) { Self::Collective } else { Self::Transfer }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Collective => "burn's all_reduce (NCCL)",
            Self::Transfer => "to_device sum on the first device",
        }
    }

    /// Element-wise sum of one tensor per device (`tensors[k]` on `devices[k]`), on every device.
    pub fn sum(self, tensors: Vec<Tensor<1>>, devices: &[Device]) -> Vec<Tensor<1>> {
        match self {
            Self::Collective => {
                // All issued before any is resolved: each device's collective must be posted.
                let pending: Vec<_> = tensors.into_iter().map(|t| all_reduce(t, ReduceOperation::Sum, devices.to_vec())).collect();
                pending.into_iter().map(|c| c.resolve()).collect()
            }
            Self::Transfer => {
                let root = &devices[0];
                let sum = tensors.into_iter().map(|t| t.to_device(root)).reduce(|a, b| a + b).expect("one device at least");
                devices.iter().map(|d| if d == root { sum.clone() } else { sum.clone().to_device(d) }).collect()
            }
        }
    }
}

/// Whether `device` is a CUDA device.
fn on_cuda(device: &Device) -> bool {
    #[cfg(feature = "cube")]
    if let burn::backend::DispatchDevice::Cube(c) = device.as_dispatch() {
        return c.runtime() == cubecl::RuntimeId::Cuda;
    }
    let _ = device;
    false
}

/// A batch as the host packed it (`ncf_datasets::Batch`): the buffer and its part sizes.
#[derive(Debug, Clone, Copy)]
pub struct HostBatch<'a> {
    /// `[users | user_pos | items | item_pos | labels | neg_pos | history]` (see [`StepInput::from_packed`]).
    pub packed: &'a [i32],
    pub n_users: usize,
    pub n_items: usize,
    pub len: usize,
    pub n_hist: Option<usize>,
}

/// Samples of shard `j` of `k` of a batch of `len` samples in groups of `group`: whole groups,
/// as even as can be (shard sizes differ by one group at most; a shard is empty only when the
/// batch has fewer groups than devices).
pub fn shard_range(len: usize, group: usize, j: usize, k: usize) -> Range<usize> {
    let groups = len / group.max(1);
    (j * groups / k) * group..((j + 1) * groups / k) * group
}

/// Samples `range` of `input`, keeping the whole batch's unique rows, history and shared
/// negatives; with shared negatives the batch's other positives stay in-batch candidates.
pub fn shard(input: &StepInput, range: Range<usize>) -> StepInput {
    let len = input.user_pos.dims()[0];
    let mut out = input.clone();
    out.user_pos = input.user_pos.clone().slice([range.clone()]);
    out.item_pos = input.item_pos.clone().slice([range.clone()]);
    out.labels = input.labels.clone().slice([range.clone()]);
    out.ahead = None;
    if let Some(shared) = &mut out.shared {
        let mut others = Vec::new();
        if range.start > 0 {
            others.push(input.item_pos.clone().slice([0..range.start]));
        }
        if range.end < len {
            others.push(input.item_pos.clone().slice([range.end..len]));
        }
        shared.others = (!others.is_empty()).then(|| Tensor::cat(others, 0));
    }
    out
}

/// Where each gradient sits in a step's flat buffer.
struct Layout {
    user: [usize; 2],
    item: [usize; 2],
    /// Per head parameter (visit order), its length, `None` without a gradient.
    slots: Vec<Option<usize>>,
}

impl Layout {
    fn len(&self) -> usize {
        1 + self.user[0] * self.user[1] + self.item[0] * self.item[1] + self.slots.iter().flatten().sum::<usize>()
    }

    /// `(loss, user rows, item rows, head slots)` out of a flat buffer.
    fn split(&self, flat: Tensor<1>) -> (Tensor<1>, Tensor<2>, Tensor<2>, Vec<Option<Tensor<1>>>) {
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            flat.clone().slice([at - n..at])
        };
        let loss = take(1);
        let user = take(self.user[0] * self.user[1]).reshape(self.user);
        let item = take(self.item[0] * self.item[1]).reshape(self.item);
        let slots = self.slots.iter().map(|s| s.map(&mut take)).collect();
        (loss, user, item, slots)
    }
}

/// The replicas beyond the first of a data-parallel run, and how their gradients meet. The
/// first replica (device 0) is the caller's model and optimizer, so evaluation and checkpoints
/// read it as they would a single device's.
pub struct DataParallel {
    devices: Vec<Device>,
    /// Replica `j + 1`: its model and optimizer on `devices[j + 1]`.
    others: Vec<(Ncf, Optimizer)>,
    reduce: Reduce,
    /// The shared negatives' log-probabilities (logQ) on each device, copied on first use.
    log_probs: Option<Vec<(Tensor<1>, Tensor<1>)>>,
}

impl DataParallel {
    /// Replicas of `model` and `optim` (on `devices[0]`) on `devices[1..]`: parameters and
    /// optimizer state copied once; from here on every step keeps them identical.
    pub fn new(model: &Ncf, optim: &Optimizer, devices: Vec<Device>) -> Self {
        assert!(!devices.is_empty(), "data parallel on no device");
        let others = devices[1..].iter().map(|d| (model.clone().to_device(d), optimizer_to(optim, d))).collect();
        let reduce = Reduce::for_devices(&devices);
        Self { devices, others, reduce, log_probs: None }
    }

    /// Forces a reduction (e.g. [`Reduce::Transfer`] on CUDA devices without NCCL).
    pub fn with_reduce(mut self, reduce: Reduce) -> Self {
        self.reduce = reduce;
        self
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn reduce(&self) -> Reduce {
        self.reduce
    }

    /// Replica `j`'s model for `j ≥ 1` (replica 0 is the caller's).
    pub fn replica(&self, j: usize) -> &Ncf {
        &self.others[j - 1].0
    }

    /// `Err` with the reason when a loss cannot be split across devices exactly.
    pub fn supports(loss: LossKind, shared: bool) -> Result<(), String> {
        if shared && loss == LossKind::Bpr {
            return Err("BPR over shared negatives is normalised by the whole batch's pair count, which shards do not know: \
                 use train.loss = \"softmax\" or \"bce\", or BPR with per-positive negatives (sampler.shared_negatives = 0)"
                .into());
        }
        Ok(())
    }

    /// Bytes one step's reduction moves per device: `(u + i) × width + head + 1` f32 values.
    pub fn reduce_bytes(model: &Ncf, batch: &HostBatch) -> usize {
        let width = model.user.val().dims()[1];
        let head: usize = model.head.num_params();
        4 * ((batch.n_users + batch.n_items) * width + head + 1)
    }

    /// One data-parallel step of `batch` (the global batch): `model` and `optim` are replica 0,
    /// on `devices[0]`. `shared`: the loss settings and log-probabilities (on device 0) when
    /// the batch has shared negatives. Returns replica 0 and the batch's mean loss on device 0.
    pub fn step(
        &mut self,
        model: Ncf,
        optim: &mut Optimizer,
        batch: HostBatch,
        shared: Option<(&LossConfig, Option<&(Tensor<1>, Tensor<1>)>)>,
        loss: LossKind,
        group: usize,
    ) -> (Ncf, Tensor<1>) {
        let k = self.devices.len();
        if let Some((_, Some((p, q)))) = shared
            && self.log_probs.is_none()
        {
            self.log_probs = Some(self.devices.iter().map(|d| (p.clone().to_device(d), q.clone().to_device(d))).collect());
        }
        for (_, o) in &mut self.others {
            // The learning rate follows the schedule set on replica 0.
            o.config = optim.config.clone();
        }
        let others = std::mem::take(&mut self.others);
        let mut replicas: Vec<(Ncf, &mut Optimizer)> = Vec::with_capacity(k);
        let mut other_optims: Vec<Optimizer> = Vec::with_capacity(k - 1);
        let mut other_models = Vec::with_capacity(k - 1);
        for (m, o) in others {
            other_models.push(m);
            other_optims.push(o);
        }
        replicas.push((model, optim));
        replicas.extend(other_models.into_iter().zip(other_optims.iter_mut()));

        // Gradient half, device by device (each device's work is queued, not waited for).
        let n = batch.packed.len();
        let mut rows_of = Vec::with_capacity(k);
        let mut flats = Vec::with_capacity(k);
        let mut layout = None;
        for (j, ((m, o), d)) in replicas.iter().zip(&self.devices).enumerate() {
            let packed = Tensor::<1, Int>::from_data(TensorData::new(batch.packed.to_vec(), [n]), d);
            let log_probs = self.log_probs.as_ref().map(|v| v[j].clone());
            let input = StepInput::from_packed(packed, (batch.n_users, batch.n_items, batch.len), shared.map(|(c, _)| (c.clone(), log_probs)), batch.n_hist);
            let range = shard_range(batch.len, group, j, k);
            let flat = (!range.is_empty()).then(|| {
                let part = shard(&input, range.clone());
                let gathered = (rows::gather(m.user.val(), input.users.clone()), rows::gather(m.item.val(), input.items.clone()));
                let g = gradients(&m.head, gathered, &part, loss, group, o.config.fused);
                let slots = g.head.into_slots(&g.tracked);
                layout.get_or_insert_with(|| Layout {
                    user: g.user.dims(),
                    item: g.item.dims(),
                    slots: slots.iter().map(|s| s.as_ref().map(|t| t.dims()[0])).collect(),
                });
                let flat2 = |t: Tensor<2>| {
                    let n = t.shape().num_elements();
                    t.reshape([n])
                };
                let mut parts = vec![g.loss.reshape([1]), flat2(g.user), flat2(g.item)];
                parts.extend(slots.into_iter().flatten());
                Tensor::cat(parts, 0).mul_scalar(range.len() as f64 / batch.len as f64)
            });
            flats.push(flat);
            rows_of.push((input.users, input.items));
        }
        let layout = layout.expect("a non-empty batch has a non-empty shard");
        let flats: Vec<Tensor<1>> = flats.into_iter().zip(&self.devices).map(|(f, d)| f.unwrap_or_else(|| Tensor::zeros([layout.len()], d))).collect();

        // One reduction, then the same update on every replica.
        let summed = self.reduce.sum(flats, &self.devices);
        let mut first = None;
        let mut updated = Vec::with_capacity(k);
        for (((m, o), flat), rows) in replicas.into_iter().zip(summed).zip(rows_of) {
            let (loss, user, item, slots) = layout.split(flat);
            first.get_or_insert(loss.clone());
            let tracked = m.head.clone();
            updated.push(apply_gradients(m, o, rows, StepGradients { loss, user, item, head: HeadGradients::Slots(slots), tracked }));
        }
        let mut updated = updated.into_iter();
        let model = updated.next().expect("replica 0");
        self.others = updated.zip(other_optims).collect();
        (model, first.expect("replica 0's loss"))
    }
}

/// `optim`'s state copied to `device`.
fn optimizer_to(optim: &Optimizer, device: &Device) -> Optimizer {
    let rows = |r: &Option<RowMoments>| {
        r.as_ref().map(|r| RowMoments { m: r.m.clone().to_device(device), v: r.v.clone().to_device(device), last: r.last.clone().to_device(device) })
    };
    Optimizer {
        config: optim.config.clone(),
        step: optim.step,
        head: optim.head.iter().map(|m| m.as_ref().map(|m| Moments { m: m.m.clone().to_device(device), v: m.v.clone().to_device(device) })).collect(),
        user: rows(&optim.user),
        item: rows(&optim.item),
        user_features: rows(&optim.user_features),
        item_features: rows(&optim.item_features),
    }
}
