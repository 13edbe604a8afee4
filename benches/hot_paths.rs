//! Criterion benchmarks of the hot paths: one training step per model, a step against 10 and
//! 1000 batch-shared negatives per loss (MF, factor 64, batch 1024), the embedding-table
//! update (fused kernel vs composed ops, 10k and 1M rows) and its per-row catch-up factors, the
//! negative sampler,
//! scoring against the whole catalogue, top-k ranking (full-ranking evaluation: score, mask,
//! top-k, metrics) and EASE's closed-form fit. `cargo bench -p ncf-trainer --bench hot_paths` (add `-- --quick` for a short
//! run). Backend-to-backend comparisons of the same workloads: `ncf bench`.

use std::hint::black_box;

use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use ncf_datasets::{BatchBuilder, NegativeSampler, SamplerConfig, UserItems};
use ncf_model::eval::{RankingChunk, full_ranking_sums};
use ncf_model::optim::TableSide;
use ncf_model::rows::{CatchUp, RowStep};
use ncf_model::{LossConfig, LossKind, ModelConfig, ModelKind, Ncf, OptimConfig, Optimizer, StepInput, train_step};

// The allocator tuning `ncf`'s compute commands run with, so the steps measure as they train.
use ncf_trainer::alloc;

const USERS: usize = 6040;
const ITEMS: usize = 3706;

fn steps(c: &mut Criterion) {
    alloc::keep_heap();
    let device = Device::flex();
    for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
        for batch in [256usize, 4096] {
            let cfg = ModelConfig { kind, ..Default::default() };
            let mut model = Some(Ncf::init(&cfg, USERS, ITEMS, 1, &device));
            let mut optim = Optimizer::new(OptimConfig::default());
            let mut builder = BatchBuilder::new(USERS, ITEMS);
            let users: Vec<u32> = (0..batch as u32).map(|k| (k * 7919) % USERS as u32).collect();
            let items: Vec<u32> = (0..batch as u32).map(|k| (k * 104_729) % ITEMS as u32).collect();
            let labels: Vec<f32> = (0..batch).map(|k| (k % 5 == 0) as u8 as f32).collect();
            let b = builder.build(&users, &items, &labels);
            c.bench_function(&format!("step/{}/batch{batch}/flex", kind.name()), |bench| {
                bench.iter(|| {
                    let n = b.packed.len();
                    let packed = Tensor::<1, Int>::from_data(TensorData::new(b.packed.clone(), [n]), &device);
                    let input = StepInput::from_packed(packed, (b.n_users, b.n_items, b.len), None, None);
                    let (m, loss) = train_step(model.take().unwrap(), &mut optim, input, LossKind::Bce, 1);
                    model = Some(m);
                    black_box(loss.into_data());
                })
            });
        }
    }
}

/// A step of MF (factor 64, cosine) at batch 1024 against 10 and against 1000 shared negatives
/// (plus the batch's in-batch positives), on a Gowalla-sized catalogue (30k × 41k): the cost
/// should grow with batch + negatives, not batch × negatives. NeuMF (factor 8, tower
/// [64, 32, 16, 8]) runs its tower per (user, candidate) pair: batch × (batch + negatives).
fn shared_steps(c: &mut Criterion) {
    alloc::keep_heap();
    let device = Device::flex();
    let (users_n, items_n, batch) = (30_000usize, 41_000usize, 1024usize);
    let mf = ModelConfig { kind: ModelKind::Mf, factors: 64, cosine: true, ..Default::default() };
    let neumf = ModelConfig::default();
    for (cfg, loss) in [(&mf, LossKind::Softmax), (&mf, LossKind::Ccl), (&mf, LossKind::Bpr), (&neumf, LossKind::Softmax)] {
        for negatives in [10usize, 1000] {
            let mut model = Some(Ncf::init(cfg, users_n, items_n, 1, &device));
            let mut optim = Optimizer::new(OptimConfig::default());
            let mut builder = BatchBuilder::new(users_n, items_n);
            let users: Vec<u32> = (0..batch as u32).map(|k| (k * 7919) % users_n as u32).collect();
            let items: Vec<u32> = (0..batch as u32).map(|k| (k * 104_729) % items_n as u32).collect();
            let negs: Vec<u32> = (0..negatives as u32).map(|k| (k * 15_485_863 + 17) % items_n as u32).collect();
            let b = builder.build_shared(&users, &items, &vec![1.0; batch], &negs, None);
            c.bench_function(&format!("shared_step/{}/{}/negatives{negatives}/flex", cfg.kind.name(), loss.name()), |bench| {
                bench.iter(|| {
                    let n = b.packed.len();
                    let packed = Tensor::<1, Int>::from_data(TensorData::new(b.packed.clone(), [n]), &device);
                    let input = StepInput::from_packed(packed, (b.n_users, b.n_items, b.len), Some((LossConfig::default(), None)), None);
                    let (m, loss) = train_step(model.take().unwrap(), &mut optim, input, loss, 1);
                    model = Some(m);
                    black_box(loss.into_data());
                })
            });
        }
    }
}

/// The embedding-table update alone, NeuMF factor 8's row width (40) and 4096 unique rows per
/// step drawn at random, on a 10k- and a 1M-row table: the fused row kernel against the same
/// row-sparse Adam composed from burn ops (`optim.fused = false`). The per-step cost should follow
/// the batch, not the table.
fn row_updates(c: &mut Criterion) {
    let device = Device::flex();
    let (width, batch) = (40, 4096);
    let mut group = c.benchmark_group("row_update");
    for n in [10_000usize, 1_000_000] {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let sets: Vec<Tensor<1, Int>> = (0..16)
            .map(|_| {
                let mut seen = std::collections::HashSet::new();
                let mut ids = Vec::with_capacity(batch);
                while ids.len() < batch {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let row = (seed % n as u64) as i32;
                    if seen.insert(row) {
                        ids.push(row);
                    }
                }
                Tensor::from_data(TensorData::new(ids, [batch]), &device)
            })
            .collect();
        let grad = Tensor::<2>::full([batch, width], 1e-3, &device);
        for fused in [true, false] {
            let mut optim = Optimizer::new(OptimConfig { fused, ..Default::default() });
            let mut table = Some(Tensor::<2>::zeros([n, width], &device));
            let mut k = 0;
            let name = if fused { "fused" } else { "composed" };
            group.bench_function(format!("adam/{n}-rows/{batch}-per-step/{name}"), |b| {
                b.iter(|| {
                    k += 1;
                    optim.begin_step();
                    let t = optim.update_rows(TableSide::Item, table.take().unwrap(), sets[k % sets.len()].clone(), grad.clone());
                    table = Some(black_box(t));
                })
            });
        }
    }
    group.finish();
}

/// The per-row catch-up factors of the row-sparse Adam for 4096 rows that come back after
/// different gaps, as on a large catalogue late in a run (the kernel's per-step memo cannot help).
fn catch_up_factors(c: &mut Criterion) {
    let step = RowStep { t: 100_000.0, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0 };
    let lasts: Vec<f64> = (0..4096u32).map(|k| step.t - 2.0 - f64::from(k * 7919 % 2000)).collect();
    c.bench_function("catch_up_factors/4096-rows-distinct-gaps", |b| {
        b.iter(|| {
            let f = CatchUp::new(&step);
            lasts.iter().map(|&l| f.factors(black_box(l)).catch_up).sum::<f64>()
        })
    });
}

fn sampler(c: &mut Criterion) {
    let train = UserItems::from_pairs(USERS, (0..USERS as u32).flat_map(|u| (0..100u32).map(move |k| (u, (u * 31 + k * 17) % ITEMS as u32))));
    let s = NegativeSampler::new(&train, ITEMS, SamplerConfig::default(), 3);
    let mut epoch = 0;
    c.bench_function("sampler/epoch/604k-positives-x4", |b| {
        b.iter(|| {
            epoch += 1;
            black_box(s.epoch(epoch).len())
        })
    });
}

/// The sampler on the training split of a large file (e.g. the 20M-row ml-20m-shaped file that
/// `../shared/tools/gen_20m.py` writes): `NCF_BENCH_DATA=/path/ratings20m.csv cargo bench -p
/// ncf-trainer -- sampler/file`. Reads, dedupes and splits leave-one-out (users with one interaction
/// dropped), then times whole epochs of 4 uniform or popularity negatives per positive; negatives
/// per second = 4 × train positives / epoch time (the epoch includes the shuffle of all samples).
fn sampler_on_file(c: &mut Criterion) {
    let Some(path) = std::env::var_os("NCF_BENCH_DATA") else {
        eprintln!("skipping sampler/file: set NCF_BENCH_DATA to an interaction file (e.g. ratings20m.csv from gen_20m.py)");
        return;
    };
    let mut data = ncf_datasets::reader::read(std::path::Path::new(&path), &Default::default()).expect("reading NCF_BENCH_DATA");
    ncf_datasets::CleanConfig { min_user_interactions: 2, ..Default::default() }.apply(&mut data);
    let split = ncf_datasets::Split::new(&data, &Default::default(), 1, false).expect("leave-one-out split");
    let positives = split.train.nnz() as u64;
    let mut group = c.benchmark_group("sampler/file");
    group.sample_size(10).throughput(criterion::Throughput::Elements(positives * 4));
    for dist in [ncf_datasets::sampler::NegativeDistribution::Uniform, ncf_datasets::sampler::NegativeDistribution::Popularity] {
        let cfg = SamplerConfig { negatives: 4, distribution: dist, ..Default::default() };
        let s = NegativeSampler::new(&split.train, split.n_items, cfg, 3);
        let mut epoch = 0;
        group.bench_function(format!("{dist:?}/{positives}-positives-x4"), |b| {
            b.iter(|| {
                epoch += 1;
                black_box(s.epoch(epoch).len())
            })
        });
    }
    group.finish();
}

fn scoring(c: &mut Criterion) {
    let device = Device::flex();
    for kind in [ModelKind::Mf, ModelKind::Neumf] {
        let cfg = ModelConfig { kind, factors: 64, ..Default::default() };
        let model = Ncf::init(&cfg, 1024, ITEMS, 1, &device);
        let side = model.item_side();
        let users = Tensor::<1, Int>::from_data(TensorData::new((0..256).collect::<Vec<i32>>(), [256]), &device);
        c.bench_function(&format!("score_all/{}/256-users/flex", kind.name()), |b| b.iter(|| black_box(model.score_all(users.clone(), &side).into_data())));
    }
}

fn top_k(c: &mut Criterion) {
    let device = Device::flex();
    let (users, k) = (256usize, 10);
    for kind in [ModelKind::Mf, ModelKind::Neumf] {
        let cfg = ModelConfig { kind, ..Default::default() };
        let model = Ncf::init(&cfg, users, ITEMS, 1, &device);
        let ids: Vec<u32> = (0..users as u32).collect();
        let train: Vec<Vec<u32>> = ids
            .iter()
            .map(|&u| {
                let mut v: Vec<u32> = (0..50u32).map(|j| (u * 13 + j * 71) % ITEMS as u32).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let test: Vec<Vec<u32>> = train.iter().map(|tr| vec![(0..ITEMS as u32).find(|i| !tr.contains(i)).unwrap()]).collect();
        let chunk = RankingChunk::new(&ids, &train, &test, ITEMS, k, &device);
        c.bench_function(&format!("top{k}/{}/256-users-x-{ITEMS}-items/flex", kind.name()), |b| {
            b.iter(|| {
                let side = model.item_side();
                let mut covered = Tensor::<1>::zeros([ITEMS], &device);
                black_box(full_ranking_sums(&model, &side, &chunk, k, &mut covered).into_data())
            })
        });
    }
}

/// EASE's closed-form fit (Gram matrix, device inverse, B) at ML-1M's 3,706 items: ~1.4·10¹¹
/// flops, so the figure tracks the flex matmul the inverse is made of.
fn ease_fit(c: &mut Criterion) {
    let device = Device::flex();
    let cfg = ModelConfig { kind: ModelKind::Ease, ..Default::default() };
    let model = Ncf::init(&cfg, USERS, ITEMS, 1, &device);
    // 6,040 users with up to 60 items each, hashed over the catalogue. (A regular pattern such
    // as (13u + 71j) mod n decouples the items so far that P's entries fall towards 1e-29 and
    // the matmuls run into subnormal products: ~4× slower, and unlike real data, whose P stays
    // above ~1e-13.)
    let hash = |u: u32, j: u32| ((u.wrapping_mul(0x9E37_79B1) ^ j.wrapping_mul(0x85EB_CA77)).wrapping_mul(0xC2B2_AE3D) >> 7) % ITEMS as u32;
    let histories = UserItems::from_pairs(USERS, (0..USERS as u32).flat_map(|u| (0..60u32).map(move |j| (u, hash(u, j)))));
    c.bench_function(&format!("ease_fit/{ITEMS}-items/flex"), |b| {
        b.iter(|| black_box(ncf_model::ease::fit(&model, histories.offsets(), histories.all_items(), cfg.ease_lambda).item.val().into_data()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = steps, shared_steps, row_updates, catch_up_factors, sampler, sampler_on_file, scoring, top_k, ease_fit
}
criterion_main!(benches);
