//! Data-parallel training ([`ncf_model::data_parallel`]) trains the same model as one device on
//! the same global batch: two devices in one process (two runtimes on one wgpu adapter, here
//! lavapipe; two replicas on the one flex device), compared step by step with `train_step`.
//!
//! Tolerances: the losses within 1e-5 relative, every weight within 1e-5 absolute (seen: up to
//! 3e-7 and 5e-7; training moves weights by 0.06 to 0.9, and a gradient scaled wrong or a shard
//! missing its in-batch candidates moves them by 1e-3 and more); the replicas bit-identical to
//! each other. The differences are f32 rounding: one device sums the batch's gradient in one
//! order, the shards in another. The losses that score against shared candidates train with
//! SGD: softmax is blind to MF's user-bias column, whose gradient is rounding noise that Adam's
//! normalised steps turn into moves of ~lr (2.5e-2 here) on one device and on two alike.

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use ncf_model::data_parallel::{DataParallel, HostBatch, Reduce};
use ncf_model::{LossConfig, LossKind, ModelConfig, ModelKind, Ncf, OptimConfig, OptimKind, Optimizer, StepInput, train_step};
use rand::{RngExt, SeedableRng};

/// Two runtimes on whatever wgpu adapter there is (the `Cpu` one and the default one: on a
/// machine with only lavapipe, both on lavapipe), or `None` with a note when wgpu has none.
fn two_wgpu() -> Option<[Device; 2]> {
    let open = |k| Device::wgpu_options().device_kind(k).init().map_err(|e| e.to_string());
    match (open(DeviceKind::Cpu), open(DeviceKind::DefaultDevice)) {
        (Ok(a), Ok(b)) if a != b => Some([a, b]),
        (Ok(_), Ok(_)) => {
            eprintln!("skipping wgpu: the default adapter is the CPU one's runtime (CUBECL_WGPU_DEFAULT_DEVICE?)");
            None
        }
        (Err(e), _) | (_, Err(e)) => {
            assert!(!std::env::var("NCF_REQUIRE_WGPU").is_ok_and(|v| v == "1"), "NCF_REQUIRE_WGPU=1 but wgpu is unavailable: {e}");
            eprintln!("skipping wgpu: no adapter ({e}); install mesa-vulkan-drivers to run it");
            None
        }
    }
}

/// A packed batch as `ncf_datasets::BatchBuilder` lays it out.
struct Packed {
    packed: Vec<i32>,
    n_users: usize,
    n_items: usize,
    len: usize,
    n_hist: Option<usize>,
}

impl Packed {
    fn host(&self) -> HostBatch<'_> {
        HostBatch { packed: &self.packed, n_users: self.n_users, n_items: self.n_items, len: self.len, n_hist: self.n_hist }
    }
}

/// Packs samples (user, item, label), shared negatives and, per user, history items.
fn pack(samples: &[(i32, i32, i32)], negatives: &[i32], history: Option<&dyn Fn(i32) -> Vec<i32>>) -> Packed {
    fn pos(uniq: &mut Vec<i32>, x: i32) -> i32 {
        match uniq.iter().position(|&y| y == x) {
            Some(p) => p as i32,
            None => {
                uniq.push(x);
                uniq.len() as i32 - 1
            }
        }
    }
    let (mut users, mut items) = (Vec::new(), Vec::new());
    let user_pos: Vec<i32> = samples.iter().map(|s| pos(&mut users, s.0)).collect();
    let item_pos: Vec<i32> = samples.iter().map(|s| pos(&mut items, s.1)).collect();
    let labels: Vec<i32> = samples.iter().map(|s| s.2).collect();
    let neg_pos: Vec<i32> = negatives.iter().map(|&n| pos(&mut items, n)).collect();
    let mut hist = Vec::new();
    let n_hist = history.map(|h| {
        let (mut hi, mut hu, mut count) = (Vec::new(), Vec::new(), Vec::new());
        for (k, &u) in users.clone().iter().enumerate() {
            let list = h(u);
            count.push(list.len() as i32);
            for i in list {
                hi.push(pos(&mut items, i));
                hu.push(k as i32);
            }
        }
        let n = hi.len();
        hist = [hi, hu, count].concat();
        n
    });
    let packed = [users.clone(), user_pos, items.clone(), item_pos, labels, neg_pos, hist].concat();
    Packed { packed, n_users: users.len(), n_items: items.len(), len: samples.len(), n_hist }
}

const USERS: usize = 40;
const ITEMS: usize = 70;

/// One of the cases: a model, its loss and `steps` batches.
struct Case {
    name: &'static str,
    model: ModelConfig,
    optim: OptimConfig,
    loss: LossKind,
    group: usize,
    shared: Option<LossConfig>,
    batches: Vec<Packed>,
}

fn cases() -> Vec<Case> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
    let mut draw = |n: usize| rng.random_range(0..n as i32);
    let mut per_sample = |group: usize, batch: usize| -> Vec<Packed> {
        (0..6)
            .map(|_| {
                let samples: Vec<(i32, i32, i32)> = (0..batch).map(|k| (0, 0, (k % group == 0) as i32)).collect();
                let samples: Vec<_> = samples
                    .chunks(group)
                    .flat_map(|g| {
                        let u = draw(USERS);
                        g.iter().map(|&(_, _, l)| (u, draw(ITEMS), l)).collect::<Vec<_>>()
                    })
                    .collect();
                pack(&samples, &[], None)
            })
            .collect()
    };
    // An odd batch (shards of 25 and 24 samples) and a batch of BPR groups (7 and 8 groups).
    let neumf_batches = per_sample(1, 49);
    let bpr_batches = per_sample(4, 60);
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(8);
    let history = |u: i32| (0..1 + (u % 3)).map(|j| (u * 7 + j * 11) % ITEMS as i32).collect::<Vec<i32>>();
    let softmax_batches = (0..6)
        .map(|_| {
            let samples: Vec<(i32, i32, i32)> = (0..33).map(|_| (rng.random_range(0..USERS as i32), rng.random_range(0..ITEMS as i32), 1)).collect();
            let negatives: Vec<i32> = (0..12).map(|_| rng.random_range(0..ITEMS as i32)).collect();
            pack(&samples, &negatives, Some(&history))
        })
        .collect();
    vec![
        Case {
            // SGD: a gradient scaled wrong shows in the weights (Adam would normalise it away).
            name: "neumf bce sgd",
            model: ModelConfig { kind: ModelKind::Neumf, factors: 4, layers: vec![16, 8, 4], init_std: 0.1, dropout: 0.0, ..Default::default() },
            optim: OptimConfig { kind: OptimKind::Sgd, lr: 0.5, ..Default::default() },
            loss: LossKind::Bce,
            group: 1,
            shared: None,
            batches: neumf_batches,
        },
        Case {
            name: "gmf bpr adam",
            model: ModelConfig { kind: ModelKind::Gmf, factors: 6, init_std: 0.1, ..Default::default() },
            optim: OptimConfig { lr: 0.01, l2: 1e-3, ..Default::default() },
            loss: LossKind::Bpr,
            group: 4,
            shared: None,
            batches: bpr_batches,
        },
        Case {
            // SGD too: softmax is blind to the user bias column, whose gradient is rounding noise
            // that Adam's normalised steps would turn into moves of ~lr on any device count.
            name: "mf softmax shared negatives, history, logq, sgd",
            model: ModelConfig { kind: ModelKind::Mf, factors: 6, init_std: 0.1, history: 0.3, ..Default::default() },
            optim: OptimConfig { kind: OptimKind::Sgd, lr: 0.5, ..Default::default() },
            loss: LossKind::Softmax,
            group: 1,
            shared: Some(LossConfig { temperature: 0.5, ..Default::default() }),
            batches: softmax_batches,
        },
    ]
}

fn log_probs(d: &Device) -> (Tensor<1>, Tensor<1>) {
    let p: Vec<f32> = (0..ITEMS).map(|i| -3.0 - (i % 5) as f32 * 0.3).collect();
    let q: Vec<f32> = (0..ITEMS).map(|i| -4.0 - (i % 3) as f32 * 0.2).collect();
    (Tensor::from_data(TensorData::new(p, [ITEMS]), d), Tensor::from_data(TensorData::new(q, [ITEMS]), d))
}

fn values(m: &Ncf) -> Vec<f32> {
    let mut out = m.user.val().into_data().try_into_vec_as::<f32>().unwrap();
    out.extend(m.item.val().into_data().try_into_vec_as::<f32>().unwrap());
    for l in m.head.mlp.iter().chain(&m.head.output) {
        out.extend(l.weight.val().into_data().try_into_vec_as::<f32>().unwrap());
        if let Some(b) = &l.bias {
            out.extend(b.val().into_data().try_into_vec_as::<f32>().unwrap());
        }
    }
    out
}

/// One device: `train_step` on every batch. Returns the model and the losses.
fn one_device(case: &Case, d: &Device) -> (Ncf, Vec<f32>) {
    let mut model = Ncf::init(&case.model, USERS, ITEMS, 3, d);
    let mut optim = Optimizer::new(case.optim.clone());
    let lp = log_probs(d);
    let mut losses = Vec::new();
    for b in &case.batches {
        let n = b.packed.len();
        let packed = Tensor::<1, Int>::from_data(TensorData::new(b.packed.clone(), [n]), d);
        let input = StepInput::from_packed(packed, (b.n_users, b.n_items, b.len), case.shared.clone().map(|c| (c, Some(lp.clone()))), b.n_hist);
        let (m, loss) = train_step(model, &mut optim, input, case.loss, case.group);
        model = m;
        losses.push(loss.into_scalar::<f32>());
    }
    (model, losses)
}

/// Data parallel on `devices`: replica 0's model, every replica's weights, the losses.
fn data_parallel(case: &Case, devices: &[Device]) -> (Vec<Vec<f32>>, Vec<f32>, Reduce) {
    let d = &devices[0];
    let mut model = Ncf::init(&case.model, USERS, ITEMS, 3, d);
    let mut optim = Optimizer::new(case.optim.clone());
    let mut dp = DataParallel::new(&model, &optim, devices.to_vec());
    let lp = log_probs(d);
    let mut losses = Vec::new();
    for b in &case.batches {
        let (m, loss) = dp.step(model, &mut optim, b.host(), case.shared.as_ref().map(|c| (c, Some(&lp))), case.loss, case.group);
        model = m;
        losses.push(loss.into_scalar::<f32>());
    }
    let mut weights = vec![values(&model)];
    weights.extend((1..devices.len()).map(|j| values(dp.replica(j))));
    (weights, losses, dp.reduce())
}

fn matches_one_device(devices: &[Device]) {
    for case in cases() {
        let (single, single_losses) = one_device(&case, &devices[0]);
        let (replicas, losses, reduce) = data_parallel(&case, devices);
        assert_eq!(reduce, Reduce::Transfer);
        let start = values(&Ncf::init(&case.model, USERS, ITEMS, 3, &devices[0]));
        let single = values(&single);
        let moved = single.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-2, "{}: training moved the weights by {moved}", case.name);
        for (j, r) in replicas.iter().enumerate().skip(1) {
            assert!(r == &replicas[0], "{}: replica {j} differs from replica 0 on {devices:?}", case.name);
        }
        let gap = single.iter().zip(&replicas[0]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let loss_gap = single_losses.iter().zip(&losses).map(|(a, b)| (a - b).abs() / a.abs().max(1e-3)).fold(0.0f32, f32::max);
        eprintln!("{} on {} devices {devices:?}: max |weight gap| {gap:e} (moved {moved:e}), max relative loss gap {loss_gap:e}", case.name, devices.len());
        assert!(gap <= 1e-5, "{}: weights differ from one device's by {gap}", case.name);
        assert!(loss_gap <= 1e-5, "{}: losses {single_losses:?} (one device) vs {losses:?}", case.name);
    }
}

#[test]
fn two_wgpu_devices_train_like_one() {
    let Some(devices) = two_wgpu() else { return };
    matches_one_device(&devices);
}

#[test]
fn flex_replicas_train_like_one_device() {
    // Flex has one device: these are replicas on it, which test the splitting, scaling and
    // summing (the transfer is a no-op). Three, so a shard is neither first nor last.
    matches_one_device(&[Device::flex(), Device::flex()]);
    matches_one_device(&[Device::flex(), Device::flex(), Device::flex()]);
}

#[test]
fn shards_are_whole_groups_and_cover_the_batch() {
    use ncf_model::data_parallel::shard_range;
    assert_eq!((0..2).map(|j| shard_range(49, 1, j, 2)).collect::<Vec<_>>(), [0..24, 24..49]);
    assert_eq!((0..2).map(|j| shard_range(60, 4, j, 2)).collect::<Vec<_>>(), [0..28, 28..60]);
    assert_eq!((0..3).map(|j| shard_range(2, 1, j, 3)).collect::<Vec<_>>(), [0..0, 0..1, 1..2]);
    assert!(DataParallel::supports(LossKind::Bpr, true).is_err() && DataParallel::supports(LossKind::Bpr, false).is_ok());
}
