//! One training step, row-sparse by construction: gather the batch's unique user and item rows,
//! compute the loss's gradient with respect to them (one fused pass on flex, see
//! [`crate::head_grad`]; autodiff on tracked leaves elsewhere), and update only those rows. No
//! value is read back to the host; the loss stays on the device for the caller to accumulate.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor};

use crate::features::FeatureRows;
use crate::head_grad;
use crate::loss::{LossConfig, LossKind, SharedScores, batch_loss, shared_loss};
use crate::ncf::{Head, HistoryRows, Ncf};
use crate::optim::{HeadGradients, HeadUpdate, Optimizer, TableSide, Track};
use crate::rows;

/// A batch on the device, sliced from one uploaded integer buffer.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// Unique user rows of the batch: `[u]`.
    pub users: Tensor<1, Int>,
    /// Per sample, the index into `users`: `[batch]`.
    pub user_pos: Tensor<1, Int>,
    pub items: Tensor<1, Int>,
    pub item_pos: Tensor<1, Int>,
    /// 0/1 labels: `[batch]`.
    pub labels: Tensor<1>,
    /// Negatives shared by every positive of the batch; `None`: each sample is labelled
    /// and scored on its own (BCE, or BPR groups).
    pub shared: Option<SharedNegatives>,
    /// The batch users' history rows, for a model that mixes them into its user rows
    /// (`ModelConfig::history`); their items are among the batch's unique items.
    pub history: Option<HistoryRows>,
    /// The next batch's unique items, when the caller knows them: a large item table's rows for
    /// it are then fetched during this step (see [`Lookahead`]).
    pub ahead: Option<Lookahead>,
    /// Which side-feature rows make the batch's unique users and items (their `n` is `[u]`,
    /// `[i]`), for a model with feature tables on that side; `None` on a side without.
    pub user_features: Option<FeatureRows>,
    pub item_features: Option<FeatureRows>,
}

/// A batch's shared negatives: every sample is a positive, scored against the items of the
/// batch's other positives and these `n` negatives as one `[batch × (batch + n)]` score matrix.
#[derive(Debug, Clone)]
pub struct SharedNegatives {
    /// Per negative, its index into the batch's unique items: `[n]`.
    pub neg_pos: Tensor<1, Int>,
    pub config: LossConfig,
    /// Log sampling probability of every item of the catalogue, as an in-batch positive (its
    /// share of training pairs) and as a shared negative (the sampler's distribution), for the
    /// logQ correction: `([n_items], [n_items])`. `None`: no correction.
    pub log_probs: Option<(Tensor<1>, Tensor<1>)>,
    /// When this input is one shard of a batch (data parallel, [`crate::data_parallel`]): the
    /// item positions of the batch's other positives, in-batch candidates after the shard's own
    /// (`[B - b]`, B the whole batch). `None`: the input is the whole batch.
    pub others: Option<Tensor<1, Int>>,
}

/// What a training loop hands every step when it knows the batch after it.
#[derive(Debug, Clone)]
pub struct Lookahead {
    /// The next batch's unique item rows (host); `None` on the loop's last step.
    pub next_items: Option<Vec<i32>>,
    /// The same for every step of the loop: rows fetched in one step wait here for the next,
    /// and a large item table's update runs on here while the next step computes. The loop
    /// calls [`rows::Pipeline::finish`] before it reads the model or the optimizer.
    pub pipeline: rows::Pipeline,
}

/// The one handle a training loop drives its steps through, kept for the loop's life: on flex it
/// carries work from one step to the next (the next batch's item rows fetched during this step,
/// a large item table's update left running into the next, batches built on a helper thread:
/// [`rows::Pipeline`], [`rows::later`]); elsewhere it runs each step as it comes. Which route a
/// step takes (the fused pass or autodiff) is decided inside [`train_step`] by
/// [`head_grad::supports`]. Call [`StepEngine::finish`] before reading the model or the
/// optimizer.
#[derive(Debug)]
pub struct StepEngine {
    pipeline: rows::Pipeline,
    /// Whether [`StepEngine::later`] hands its jobs to a helper thread (else runs them at once).
    beside: bool,
}

/// The smallest batch whose building [`StepEngine::later`] hands to a helper thread. A smaller
/// batch is built on the spot: its step is too short for the hand-over (and a helper spinning
/// between jobs) to pay (BENCHMARKS.md, session 13).
const LATER_MIN_BATCH: usize = 512;

/// A result of [`StepEngine::later`].
pub use crate::rows::Later;

impl StepEngine {
    /// An engine for a loop whose batches hold `batch` samples.
    pub fn new(batch: usize) -> Self {
        Self { pipeline: rows::Pipeline::default(), beside: batch >= LATER_MIN_BATCH }
    }

    /// Runs `job` beside the steps (on flex, on the first helper between its row jobs) for
    /// a result wanted later, such as the loop's next batch; with batches under
    /// `LATER_MIN_BATCH` samples, here and now.
    pub fn later<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Later<T> {
        if self.beside { rows::later(job) } else { rows::ready(job()) }
    }

    /// [`train_step`] on `input`, told the next batch's unique item rows when there is one
    /// (`None` on the loop's last step).
    pub fn step(
        &self,
        model: Ncf,
        optim: &mut Optimizer,
        mut input: StepInput,
        next_items: Option<Vec<i32>>,
        loss: LossKind,
        group: usize,
    ) -> (Ncf, Tensor<1>) {
        input.ahead = Some(Lookahead { next_items, pipeline: self.pipeline.clone() });
        train_step(model, optim, input, loss, group)
    }

    /// Ends the work a step left running: the model and the optimizer are complete after this.
    pub fn finish(&self) {
        self.pipeline.finish();
    }
}

impl StepInput {
    /// Slices `[users | user_pos | items | item_pos | labels | neg_pos | history]` (see
    /// `ncf_datasets::Batch`); `shared` (the loss settings and log-probabilities) is given
    /// when the batch has shared negatives, whose positions follow the labels; `n_hist`, the
    /// number of history entries when the batch has history rows, which end the buffer.
    pub fn from_packed(
        packed: Tensor<1, Int>,
        (n_users, n_items, len): (usize, usize, usize),
        shared: Option<(LossConfig, Option<(Tensor<1>, Tensor<1>)>)>,
        n_hist: Option<usize>,
    ) -> Self {
        let a = n_users;
        let b = a + len;
        let c = b + n_items;
        let d = c + len;
        let end = packed.dims()[0];
        let e = end - n_hist.map_or(0, |h| 2 * h + n_users);
        let history = n_hist.map(|h| HistoryRows {
            item_pos: packed.clone().slice([e..e + h]),
            user_pos: packed.clone().slice([e + h..e + 2 * h]),
            count: packed.clone().slice([e + 2 * h..end]),
        });
        Self {
            users: packed.clone().slice([0..a]),
            user_pos: packed.clone().slice([a..b]),
            items: packed.clone().slice([b..c]),
            item_pos: packed.clone().slice([c..d]),
            labels: packed.clone().slice([d..d + len]).float(),
            shared: shared.map(|(config, log_probs)| SharedNegatives { neg_pos: packed.slice([d + len..e]), config, log_probs, others: None }),
            history,
            ahead: None,
            user_features: None,
            item_features: None,
        }
    }
}

/// Trains `model` on one batch and returns it with the (detached, on-device) mean loss.
///
/// With [`LossKind::Bpr`] the batch is groups of `group` samples, a positive followed by its
/// negatives, and the loss is -log σ(pos - neg) over every (positive, negative) pair.
pub fn train_step(mut model: Ncf, optim: &mut Optimizer, input: StepInput, loss: LossKind, group: usize) -> (Ncf, Tensor<1>) {
    optim.begin_step();
    // A pure feature model (no id embeddings) leaves its zero id tables alone.
    let fused_adam = optim.fused_adam_on(&input.items.device()) && model.ids;
    let (n_users, n_items) = (input.users.dims()[0], input.items.dims()[0]);
    assert_eq!(
        model.user_features.is_some(),
        input.user_features.is_some(),
        "a model with user features trains on batches with their feature rows, and only it"
    );
    assert_eq!(
        model.item_features.is_some(),
        input.item_features.is_some(),
        "a model with item features trains on batches with their feature rows, and only it"
    );
    if fused_adam {
        rows::expect_update(&model.user.val(), n_users);
        rows::expect_update(&model.item.val(), n_items);
    }
    // With enough rows, the item table's update starts on the first helper while this one
    // updates the head and the user table (and joins it, on a table past the caches).
    let item_beside = fused_adam && rows::update_beside(&model.item.val(), n_items);
    // The tables are read here and updated in place below: no handle to them is kept in
    // between, so backends that update uniquely owned buffers in place (flex) never copy them.
    let user_rows = rows::gather(model.user.val(), input.users.clone());
    let pipeline = input.ahead.as_ref().map(|a| &a.pipeline);
    let next_items = input.ahead.as_ref().and_then(|a| a.next_items.as_deref());
    // The previous step's item update may still be running (deferred below), the table lent to
    // it: it wrote this step's rows first, and `take` waits for those (or for all of it, and
    // gathers from the lent table); the gather here runs only on a table the model holds.
    let fetched = pipeline.and_then(|p| p.take(&model.item.val(), &input.items));
    let item_rows = fetched.unwrap_or_else(|| rows::gather(model.item.val(), input.items.clone()));
    // The next batch's item rows are copied, and this batch's rows of the table and its moments
    // read into a helper thread's caches, during forward and backward; that is over (or
    // dropped) before the update below writes them.
    let state = optim.item.as_ref().map(|s| (&s.m, &s.v, &s.last));
    let pending = item_beside.then(|| {
        let into = pipeline.cloned().unwrap_or_default();
        rows::gather_ahead(&model.item.val(), &input.items, next_items.unwrap_or_default(), &into, state)
    });
    assert_eq!(model.head.history > 0.0, input.history.is_some(), "a model with history trains on batches with history rows, and only it");
    // Side features: their composed rows added to the id rows the head sees.
    let with_features = |rows: Tensor<2>, table: &Option<Param<Tensor<2>>>, f: &Option<FeatureRows>| match (table, f) {
        (Some(t), Some(f)) => rows + f.compose(t.val()),
        _ => rows,
    };
    let user_rows = with_features(user_rows, &model.user_features, &input.user_features);
    let item_rows = with_features(item_rows, &model.item_features, &input.item_features);
    let StepGradients { loss, user: gu, item: gi, head: head_grads, tracked: head } =
        gradients(&model.head, (user_rows, item_rows), &input, loss, group, optim.config.fused);
    drop(pending);
    // The feature rows' gradients, from the gradients of the rows they were added to.
    let feature_grads = |f: &Option<FeatureRows>, g: &Tensor<2>| f.as_ref().map(|f| f.backward(g.clone()));
    let (gfu, gfi) = (feature_grads(&input.user_features, &gu), feature_grads(&input.item_features, &gi));
    // With the next batch known, a large item table's update is left running on the second
    // thread, its rows in the next batch first, while the head and the user table are updated
    // here and the next step starts. `None`: deferred.
    let gi = match (pipeline, next_items) {
        _ if !model.ids => None,
        // The table and its state are lent to the update until a step takes them back.
        (Some(p), Some(next)) if item_beside => p.defer_adam(&mut model.item, optim, &input.items, gi, next).err(),
        _ => {
            // This step's update writes the table: a deferred update hands it back first.
            if let Some(p) = pipeline {
                p.give_back(&mut model.item, optim);
            }
            Some(gi)
        }
    };
    let Ncf { user, item, head: _, user_features, item_features, ids, ease_history } = model;
    let head_and_user = |optim: &mut Optimizer| {
        let head = head.map(&mut HeadUpdate::new(optim, &head_grads));
        (head, if ids { user.map(|table| optim.update_rows(TableSide::User, table, input.users, gu)) } else { user })
    };
    let ((head, user), item) = match gi {
        None => (head_and_user(optim), item),
        Some(gi) if item_beside => {
            // Moved out of the parameter, not cloned: the kernel updates the buffer in place only
            // while it holds the one handle to it.
            let (id, table, mapper) = item.consume();
            let (state, step) = (optim.take_rows(TableSide::Item, table), optim.row_step());
            let items = input.items;
            let (out, head_user) = rows::beside(move || rows::adam_rows(state, items, gi, step), || head_and_user(optim));
            let table = optim.put_rows(TableSide::Item, out);
            (head_user, Param::from_mapped_value(id, table, mapper))
        }
        Some(gi) => {
            let head_user = head_and_user(optim);
            (head_user, item.map(|table| optim.update_rows(TableSide::Item, table, input.items, gi)))
        }
    };
    let mut update_features = |side, table: Option<Param<Tensor<2>>>, f: Option<FeatureRows>, g: Option<Tensor<2>>| match (table, f, g) {
        (Some(t), Some(f), Some(g)) => Some(t.map(|t| optim.update_rows(side, t, f.rows, g))),
        (t, ..) => t,
    };
    let user_features = update_features(TableSide::UserFeatures, user_features, input.user_features, gfu);
    let item_features = update_features(TableSide::ItemFeatures, item_features, input.item_features, gfi);
    (Ncf { user, item, head, user_features, item_features, ids, ease_history }, loss)
}

/// A batch's mean loss and its gradients, before any update: the first half of [`train_step`].
pub struct StepGradients {
    /// Mean loss over the batch (detached, on the device): `[1]`.
    pub loss: Tensor<1>,
    /// Gradients of the batch's unique user and item rows: `[u, width]`, `[i, width]`.
    pub user: Tensor<2>,
    pub item: Tensor<2>,
    pub head: HeadGradients,
    /// The head whose parameters key [`StepGradients::head`]: after autodiff the tracked copy,
    /// else the model's own.
    pub tracked: Head,
}

/// Forward and backward of one batch given its gathered rows (`[u, width]`, `[i, width]`, in the
/// order of `input.users` and `input.items`): one fused pass where the backend has it (flex)
/// and `fused` allows it, else autodiff on tracked leaves.
pub fn gradients(head: &Head, (user_rows, item_rows): (Tensor<2>, Tensor<2>), input: &StepInput, loss: LossKind, group: usize, fused: bool) -> StepGradients {
    // Forward and backward: one fused pass where `head_grad::supports` says it computes this step
    // (and `fused` asks for it), else autodiff.
    let fused = fused.then(|| head_grad::head_grads(head, input, &user_rows, &item_rows, loss, group).ok()).flatten();
    // The head to update: the tracked one after autodiff, whose parameters key the gradients.
    match fused {
        Some(g) => StepGradients { loss: g.loss, user: g.user, item: g.item, head: HeadGradients::Given(g.params), tracked: head.clone() },
        None => {
            let (user_rows, item_rows) = (user_rows.autodiff().require_grad(), item_rows.autodiff().require_grad());
            let head = head.clone().map(&mut Track);
            let users = match &input.history {
                Some(h) => head.with_history(user_rows.clone(), item_rows.clone(), h),
                None => user_rows.clone(),
            };
            let loss = match &input.shared {
                Some(shared) => shared_batch_loss(&head, (users, &input.user_pos), (item_rows.clone(), &input.items, &input.item_pos), shared, loss),
                None => {
                    batch_loss(loss, head.forward_rows(users, input.user_pos.clone(), item_rows.clone(), input.item_pos.clone()), input.labels.clone(), group)
                }
            };
            let grads = loss.backward();
            let gu = user_rows.grad(&grads).expect("user rows are tracked");
            let gi = item_rows.grad(&grads).expect("item rows are tracked");
            StepGradients { loss: loss.detach().inner(), user: gu, item: gi, head: HeadGradients::Graph(grads), tracked: head }
        }
    }
}

/// The second half of [`train_step`] without its pipelining: starts an optimizer step and
/// updates the head and the rows `users` and `items` (unique, `[u]`, `[i]`) of the tables with
/// `grads` (whose head gradients may also be [`HeadGradients::Slots`]).
pub fn apply_gradients(model: Ncf, optim: &mut Optimizer, (users, items): (Tensor<1, Int>, Tensor<1, Int>), grads: StepGradients) -> Ncf {
    optim.begin_step();
    let StepGradients { user: gu, item: gi, head: head_grads, tracked, .. } = grads;
    let Ncf { user, item, head: _, user_features, item_features, ids, ease_history } = model;
    assert!(user_features.is_none() && item_features.is_none(), "side features train through train_step");
    let head = tracked.map(&mut HeadUpdate::new(optim, &head_grads));
    let (user, item) = if ids {
        (user.map(|table| optim.update_rows(TableSide::User, table, users, gu)), item.map(|table| optim.update_rows(TableSide::Item, table, items, gi)))
    } else {
        (user, item)
    };
    Ncf { user, item, head, user_features, item_features, ids, ease_history }
}

/// The loss of a batch of positives against its shared negatives: each positive's user row
/// scored against the items of every positive of the batch and the shared negatives.
fn shared_batch_loss(
    head: &crate::ncf::Head,
    (user_rows, user_pos): (Tensor<2>, &Tensor<1, Int>),
    (item_rows, items, item_pos): (Tensor<2>, &Tensor<1, Int>, &Tensor<1, Int>),
    shared: &SharedNegatives,
    kind: LossKind,
) -> Tensor<1> {
    let ([b], [n]) = (item_pos.dims(), shared.neg_pos.dims());
    let device = item_pos.device();
    // In-batch candidates: this input's positives, then (a data-parallel shard) the batch's others.
    let mut columns = vec![item_pos.clone()];
    columns.extend(shared.others.clone());
    columns.push(shared.neg_pos.clone());
    let candidates = Tensor::cat(columns, 0); // [bb + n]
    let bb = candidates.dims()[0] - n;
    let mut scores = head.score_matrix(user_rows.select(0, user_pos.clone()), item_rows.select(0, candidates.clone()));
    if kind == LossKind::Ccl && !head.cosine {
        // CCL's margins are cosines: bound other heads' logits to the same range.
        scores = scores.tanh();
    }
    // A candidate is a negative of a row unless it is the row's own item (the diagonal, a
    // repeated item, a shared negative that happens to be it); in-batch columns only if asked.
    let own = item_pos.clone().reshape([b, 1]).expand([b, bb + n]).equal(candidates.clone().reshape([1, bb + n]).expand([b, bb + n]));
    let mut negative = own.bool_not();
    if !shared.config.in_batch {
        let cols = Tensor::<1, Int>::arange(0..(bb + n) as i64, &device).greater_equal_elem(bb as i64);
        negative = negative.bool_and(cols.reshape([1, bb + n]).expand([b, bb + n]));
    }
    let log_rate = match (&shared.log_probs, kind) {
        (Some((as_positive, as_negative)), LossKind::Softmax) => {
            // Expected count among a batch's candidates: bb · p(positive), n · p(negative).
            let ids = items.clone().select(0, candidates);
            let p = as_positive.clone().select(0, ids.clone().slice([0..bb])).add_scalar((bb as f32).ln());
            let q = as_negative.clone().select(0, ids.slice([bb..bb + n])).add_scalar((n.max(1) as f32).ln());
            Some(Tensor::cat(vec![p, q], 0))
        }
        _ => None,
    };
    shared_loss(kind, &shared.config, SharedScores { scores, negative, log_rate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, ModelKind};
    use crate::optim::{OptimConfig, OptimKind};
    use burn::tensor::{Device, TensorData};

    fn input(users: &[i32], upos: &[i32], items: &[i32], ipos: &[i32], labels: &[i32], d: &Device) -> StepInput {
        let packed: Vec<i32> = [users, upos, items, ipos, labels].concat();
        let n = packed.len();
        StepInput::from_packed(Tensor::from_data(TensorData::new(packed, [n]), d), (users.len(), items.len(), labels.len()), None, None)
    }

    fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
        let w = t.dims()[1];
        t.into_data().try_into_vec_as::<f32>().unwrap().chunks(w).map(|c| c.to_vec()).collect()
    }

    #[test]
    fn only_batch_rows_move_and_loss_falls() {
        let d = Device::flex();
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
            let cfg = ModelConfig { kind, factors: 4, layers: vec![8, 4], init_std: 0.1, ..Default::default() };
            let mut model = Ncf::init(&cfg, 6, 8, 2, &d);
            let (u0, i0) = (rows(model.user.val()), rows(model.item.val()));
            let mut optim = Optimizer::new(OptimConfig { lr: 0.05, ..Default::default() });
            let mut losses = Vec::new();
            for _ in 0..30 {
                // users 1 and 4, items 2, 5 and 7: (1,2,+) (4,5,-) (1,7,-) (4,2,+)
                let x = input(&[1, 4], &[0, 1, 0, 1], &[2, 5, 7], &[0, 1, 2, 0], &[1, 0, 0, 1], &d);
                let (m, loss) = train_step(model, &mut optim, x, LossKind::Bce, 1);
                model = m;
                losses.push(loss.into_scalar::<f32>());
            }
            assert!(losses[29] < losses[0] * 0.9, "{kind:?}: {losses:?}");
            let (u1, i1) = (rows(model.user.val()), rows(model.item.val()));
            for u in 0..6 {
                assert_eq!(u0[u] != u1[u], u == 1 || u == 4, "{kind:?} user row {u}");
            }
            for i in 0..8 {
                assert_eq!(i0[i] != i1[i], [2, 5, 7].contains(&i), "{kind:?} item row {i}");
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn an_item_table_fetched_ahead_and_updated_beside_the_rest_matches_the_composed_ops() {
        // NeuMF factor 8: rows of 40, so 60000 items are past the two-thread split's threshold;
        // 3000 are not, but a batch still holds over 1024 of them.
        for n_items in [3000, 60_000] {
            item_table_fetched_ahead_and_updated_beside(n_items);
        }
    }

    #[cfg(feature = "flex")]
    fn item_table_fetched_ahead_and_updated_beside(n_items: usize) {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Neumf, factors: 8, layers: vec![64, 32, 16, 8], init_std: 0.1, ..Default::default() };
        let (n_users, batch) = (300, 2048);
        let batches: Vec<StepInput> = (0..4u64)
            .map(|s| {
                use rand::{RngExt, SeedableRng};
                let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(s);
                let mut pick = |n: usize| (0..batch).map(|_| rng.random_range(0..n as i32)).collect::<Vec<i32>>();
                let (u, i) = (pick(n_users), pick(n_items));
                let uniq = |ids: &[i32]| {
                    let mut seen = std::collections::HashMap::new();
                    let pos: Vec<i32> = ids
                        .iter()
                        .map(|&x| {
                            let k = seen.len() as i32;
                            *seen.entry(x).or_insert(k)
                        })
                        .collect();
                    let mut rows = vec![0; seen.len()];
                    seen.iter().for_each(|(&x, &k)| rows[k as usize] = x);
                    (rows, pos)
                };
                let ((ur, up), (ir, ip)) = (uniq(&u), uniq(&i));
                let labels: Vec<i32> = (0..batch).map(|k| (k % 5 == 0) as i32).collect();
                input(&ur, &up, &ir, &ip, &labels, &d)
            })
            .collect();
        let item_rows = |x: &StepInput| x.items.clone().into_data().try_into_vec_as::<i32>().unwrap();
        let run = |fused: bool, ahead: bool| {
            let mut model = Ncf::init(&cfg, n_users, n_items, 3, &d);
            let mut optim = Optimizer::new(OptimConfig { fused, lr: 0.01, l2: 1e-4, ..Default::default() });
            let pipeline = rows::Pipeline::default();
            let mut losses = Vec::new();
            for (k, x) in batches.iter().enumerate() {
                assert!(rows::update_beside(&model.item.val(), x.items.dims()[0]), "the path under test runs when fused");
                let mut x = x.clone();
                if ahead {
                    x.ahead = Some(Lookahead { next_items: batches.get(k + 1).map(item_rows), pipeline: pipeline.clone() });
                }
                let (m, loss) = train_step(model, &mut optim, x, LossKind::Bce, 1);
                model = m;
                losses.push(loss.into_scalar::<f32>());
            }
            pipeline.finish();
            (rows(model.user.val()), rows(model.item.val()), losses)
        };
        // Fetching the next batch's rows ahead changes nothing (consecutive batches share rows).
        let fused = run(true, true);
        assert_eq!(fused, run(true, false));
        let composed = run(false, false);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 + 1e-5 * b.abs();
        assert!(fused.2.iter().zip(&composed.2).all(|(a, b)| close(*a, *b)), "losses {:?} vs {:?}", fused.2, composed.2);
        // The composed run also takes the autodiff head, whose sums run in another order; on a
        // near-zero gradient Adam's normalised step turns that rounding into moves of up to ~1e-5
        // here. A row updated twice, or not at all, is off by about lr = 1e-2.
        let near = |a: f32, b: f32| (a - b).abs() <= 1e-4;
        for (what, a, b) in [("user", &fused.0, &composed.0), ("item", &fused.1, &composed.1)] {
            for (r, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(x.iter().zip(y).all(|(p, q)| near(*p, *q)), "{what} row {r}: {x:?} vs {y:?}");
            }
        }
    }

    #[test]
    fn lazy_adam_equals_dense_adam_on_rows_seen_every_step() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Gmf, factors: 3, ..Default::default() };
        let run = |sparse: bool| {
            let mut model = Ncf::init(&cfg, 3, 3, 5, &d);
            let mut optim = Optimizer::new(OptimConfig { sparse, lr: 0.01, ..Default::default() });
            for _ in 0..3 {
                let x = input(&[0, 1, 2], &[0, 1, 2], &[0, 1, 2], &[2, 0, 1], &[1, 0, 1], &d);
                model = train_step(model, &mut optim, x, LossKind::Bce, 1).0;
            }
            (rows(model.user.val()), rows(model.item.val()))
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.0.iter().flatten().zip(b.0.iter().flatten()).chain(a.1.iter().flatten().zip(b.1.iter().flatten())) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn sparse_adam_catches_up_with_dense_adam_on_rarely_seen_rows() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Mf, factors: 3, init_std: 0.1, ..Default::default() };
        let init = Ncf::init(&cfg, 4, 4, 9, &d);
        let (u_init, i_init) = (rows(init.user.val()), rows(init.item.val()));
        let run = |sparse: bool| {
            let mut model = Ncf::init(&cfg, 4, 4, 9, &d);
            let mut optim = Optimizer::new(OptimConfig { sparse, lr: 0.01, ..Default::default() });
            for step in 0..200 {
                // User 3 and item 3 show up only every 7th step, and in the last one, so no row
                // has steps left to catch up; the others every step.
                let x = if step % 7 == 6 || step == 199 {
                    input(&[0, 3], &[0, 1, 1], &[1, 3], &[0, 1, 0], &[1, 1, 0], &d)
                } else {
                    input(&[0, 1, 2], &[0, 1, 2], &[0, 1, 2], &[2, 0, 1], &[1, 0, 1], &d)
                };
                model = train_step(model, &mut optim, x, LossKind::Bce, 1).0;
            }
            (rows(model.user.val()), rows(model.item.val()))
        };
        let (sparse, dense) = (run(true), run(false));
        let moved = |a: &[Vec<f32>], b: &[Vec<f32>], r: usize| -> f32 { a[r].iter().zip(&b[r]).map(|(x, y)| (x - y).abs()).sum() };
        for r in 0..4 {
            let (dense_move, gap) = (moved(&dense.0, &u_init, r), moved(&sparse.0, &dense.0, r));
            assert!(gap < 0.03 * dense_move, "user {r}: sparse differs from dense by {gap}, dense moved {dense_move}");
            let (dense_move, gap) = (moved(&dense.1, &i_init, r), moved(&sparse.1, &dense.1, r));
            assert!(gap < 0.03 * dense_move, "item {r}: sparse differs from dense by {gap}, dense moved {dense_move}");
        }
    }

    #[test]
    fn restored_optimizer_state_continues_exactly() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Neumf, factors: 3, layers: vec![6, 4], init_std: 0.1, ..Default::default() };
        let batch = |s: usize| {
            let u = [(s % 4) as i32, 4];
            input(&u, &[0, 1, 1], &[(s % 5) as i32, 5], &[0, 1, 0], &[1, 0, 1], &d)
        };
        let mut model = Ncf::init(&cfg, 5, 6, 1, &d);
        let mut optim = Optimizer::new(OptimConfig { lr: 0.05, ..Default::default() });
        for s in 0..5 {
            model = train_step(model, &mut optim, batch(s), LossKind::Bce, 1).0;
        }
        let state: std::collections::HashMap<_, _> = optim.state_tensors().into_iter().collect();
        let mut copy = Optimizer::restore(optim.config.clone(), optim.step, state.clone(), &model).unwrap();
        let mut model_copy = model.clone();
        for s in 5..12 {
            model = train_step(model, &mut optim, batch(s), LossKind::Bce, 1).0;
            model_copy = train_step(model_copy, &mut copy, batch(s), LossKind::Bce, 1).0;
        }
        assert_eq!(rows(model.user.val()), rows(model_copy.user.val()));
        assert_eq!(rows(model.item.val()), rows(model_copy.item.val()));
        let mut bad = state;
        bad.insert("user.last".into(), Tensor::zeros([2], &d));
        assert!(Optimizer::restore(optim.config.clone(), 5, bad, &model).unwrap_err().contains("user.last"));
    }

    #[test]
    fn bpr_and_sgd_train() {
        let d = Device::flex();
        let cfg = ModelConfig { kind: ModelKind::Mf, factors: 4, init_std: 0.1, ..Default::default() };
        let mut model = Ncf::init(&cfg, 2, 4, 3, &d);
        let mut optim = Optimizer::new(OptimConfig { kind: OptimKind::Sgd, lr: 0.5, ..Default::default() });
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..40 {
            // groups of (positive, negative): user 0 prefers item 1 over 3, user 1 item 2 over 0.
            let x = input(&[0, 1], &[0, 0, 1, 1], &[1, 3, 2, 0], &[0, 1, 2, 3], &[1, 0, 1, 0], &d);
            let (m, loss) = train_step(model, &mut optim, x, LossKind::Bpr, 2);
            model = m;
            last = loss.into_scalar::<f32>();
            first.get_or_insert(last);
        }
        assert!(last < first.unwrap() * 0.5, "{first:?} → {last}");
    }

    /// With `model.history`, a step moves the rows of the users' history items as well, and
    /// trains the same on every backend.
    #[cfg(any(feature = "flex", feature = "cube"))]
    #[test]
    fn history_rows_move_with_the_batch_and_agree_across_backends() {
        use crate::loss::LossConfig;
        let mut first: Option<Vec<f32>> = None;
        for d in crate::optim::fused_tests::devices() {
            let cfg = ModelConfig { kind: ModelKind::Mf, factors: 4, init_std: 0.1, cosine: true, history: 0.5, ..Default::default() };
            let mut model = Ncf::init(&cfg, 6, 10, 2, &d);
            let i0 = rows(model.item.val());
            let mut optim = Optimizer::new(OptimConfig { lr: 0.05, ..Default::default() });
            let mut losses = Vec::new();
            for _ in 0..30 {
                // Positives (1,2) (4,5); shared negative 3; user 1's history {2, 9}, user 4's {0}:
                // unique items [2, 5, 3, 9, 0].
                let packed: Vec<i32> = [&[1, 4][..], &[0, 1], &[2, 5, 3, 9, 0], &[0, 1], &[1, 1], &[2], &[0, 3, 4], &[0, 0, 1], &[2, 1]].concat();
                let n = packed.len();
                let x = StepInput::from_packed(Tensor::from_data(TensorData::new(packed, [n]), &d), (2, 5, 2), Some((LossConfig::default(), None)), Some(3));
                let (m, l) = train_step(model, &mut optim, x, LossKind::Softmax, 1);
                model = m;
                losses.push(l.into_scalar::<f32>());
            }
            assert!(losses[29] < losses[0] * 0.9, "{losses:?}");
            let i1 = rows(model.item.val());
            for i in 0..10 {
                assert_eq!(i0[i][..4] != i1[i][..4], [0, 2, 3, 5, 9].contains(&i), "item row {i}");
            }
            match &first {
                None => first = Some(losses),
                Some(flex) => {
                    for (step, (x, y)) in flex.iter().zip(&losses).enumerate().take(3) {
                        assert!((x - y).abs() <= 1e-3 + 1e-3 * x.abs(), "step {step}: {x} vs {y} on {d:?}");
                    }
                }
            }
        }
    }

    /// Every loss over shared negatives trains every model through autodiff on every backend
    /// here (flex, and wgpu where an adapter exists), moving only the batch's rows (its users,
    /// its positives' items and its negatives'), with the same losses on each backend.
    #[cfg(any(feature = "flex", feature = "cube"))]
    #[test]
    fn shared_negative_losses_train_every_model_on_every_backend() {
        use crate::loss::LossConfig;
        let mut first_device: Option<Vec<Vec<f32>>> = None;
        for d in crate::optim::fused_tests::devices() {
            let mut all = Vec::new();
            for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
                for loss in [LossKind::Bce, LossKind::Bpr, LossKind::Softmax, LossKind::Ccl] {
                    let cfg = ModelConfig { kind, factors: 4, layers: vec![8, 4], init_std: 0.1, cosine: loss == LossKind::Ccl, ..Default::default() };
                    let mut model = Ncf::init(&cfg, 6, 10, 2, &d);
                    let (u0, i0) = (rows(model.user.val()), rows(model.item.val()));
                    let mut optim = Optimizer::new(OptimConfig { lr: 0.05, ..Default::default() });
                    let mut losses = Vec::new();
                    for _ in 0..30 {
                        // Positives (1,2) (4,5) (1,7) (4,2); shared negatives 3, 8 and 5 (item 5
                        // is user 4's positive: masked in that row only); item 2 twice in the batch.
                        let packed: Vec<i32> = [&[1, 4][..], &[0, 1, 0, 1], &[2, 5, 7, 3, 8], &[0, 1, 2, 0], &[1, 1, 1, 1], &[3, 4, 1]].concat();
                        let n = packed.len();
                        let config = LossConfig { temperature: 0.5, margin: 0.2, ..Default::default() };
                        let logq = (Tensor::<1>::full([10], -2.0, &d), Tensor::<1>::full([10], -10f32.ln(), &d));
                        let x = StepInput::from_packed(Tensor::from_data(TensorData::new(packed, [n]), &d), (2, 5, 4), Some((config, Some(logq))), None);
                        let (m, l) = train_step(model, &mut optim, x, loss, 1);
                        model = m;
                        losses.push(l.into_scalar::<f32>());
                    }
                    assert!(losses[29] < losses[0] * 0.9, "{kind:?} {loss:?}: {losses:?}");
                    let (u1, i1) = (rows(model.user.val()), rows(model.item.val()));
                    // MF by cosine keeps its unused bias columns: compare the factor columns.
                    let f = cfg.layout().width() - (kind == ModelKind::Mf) as usize;
                    for u in 0..6 {
                        assert_eq!(u0[u][..f] != u1[u][..f], u == 1 || u == 4, "{kind:?} {loss:?} user row {u}");
                    }
                    for i in 0..10 {
                        assert_eq!(i0[i][..f] != i1[i][..f], [2, 3, 5, 7, 8].contains(&i), "{kind:?} {loss:?} item row {i}");
                    }
                    all.push(losses);
                }
            }
            match &first_device {
                None => first_device = Some(all),
                Some(flex) => agree_early(flex, &all, &d),
            }
        }
    }

    /// The first steps of each case agree closely across devices; later ones drift apart with
    /// rounding, which Adam's normalised steps amplify and which can flip a hinge (CCL's
    /// margins, ReLU) to the other side.
    #[cfg(any(feature = "flex", feature = "cube"))]
    fn agree_early(first: &[Vec<f32>], other: &[Vec<f32>], d: &Device) {
        for (case, (a, b)) in first.iter().zip(other).enumerate() {
            for (step, (x, y)) in a.iter().zip(b).enumerate().take(3) {
                assert!((x - y).abs() <= 1e-3 + 1e-3 * x.abs(), "case {case} step {step}: {x} vs {y} on {d:?}: {a:?} vs {b:?}");
            }
        }
    }

    /// Side features: every model and loss trains with feature tables on both sides, on every
    /// backend; only the feature rows the batch's entities use move, and a pure feature model
    /// (no id embeddings) leaves its zero id tables alone.
    #[cfg(any(feature = "flex", feature = "cube"))]
    #[test]
    fn feature_tables_train_row_sparsely_with_every_model_and_loss_on_every_backend() {
        use crate::features::HostFeatureRows;
        use crate::loss::LossConfig;
        // 6 users over 4 user-feature rows, 10 items over 5 item-feature rows (CSR).
        let (u_off, u_rows, u_w) = ([0u32, 1, 3, 4, 5, 6, 8], [0u32, 0, 1, 2, 0, 2, 0, 1], [1.0f32, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5, 0.5]);
        let i_off: Vec<u32> = (0..=10).collect();
        let i_rows: Vec<u32> = (0..10).map(|i| i % 4).collect();
        let i_w = [1.0f32; 10];
        let mut first_device: Option<Vec<Vec<f32>>> = None;
        for d in crate::optim::fused_tests::devices() {
            let mut all = Vec::new();
            for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::Neumf, ModelKind::Mf] {
                for loss in [LossKind::Bce, LossKind::Bpr, LossKind::Softmax, LossKind::Ccl] {
                    for ids in [true, false] {
                        let cfg = ModelConfig { kind, factors: 4, layers: vec![8, 4], init_std: 0.1, id_embeddings: ids, ..Default::default() };
                        let mut model = Ncf::init(&cfg, 6, 10, 2, &d).with_feature_tables(0.1, (Some(4), Some(5)), 7);
                        let table = |t: &Option<Param<Tensor<2>>>| rows(t.as_ref().unwrap().val());
                        let (fu0, fi0, u0) = (table(&model.user_features), table(&model.item_features), rows(model.user.val()));
                        let mut optim = Optimizer::new(OptimConfig { lr: 0.05, ..Default::default() });
                        let mut losses = Vec::new();
                        // Users 1 and 4, items 2, 5, 7, 3 (BCE: labels 1, 1, 0, 0; BPR: groups of
                        // a positive and a negative; the shared losses: positives 2 and 5 against
                        // shared negatives 7 and 3).
                        let (users, items) = ([1, 4], [2, 5, 7, 3]);
                        let shared = matches!(loss, LossKind::Softmax | LossKind::Ccl);
                        for _ in 0..30 {
                            let packed: Vec<i32> = if shared {
                                [&users[..], &[0, 1], &items, &[0, 1], &[1, 1], &[2, 3]].concat()
                            } else {
                                [&users[..], &[0, 0, 1, 1], &items, &[0, 2, 1, 3], &[1, 0, 1, 0]].concat()
                            };
                            let n = packed.len();
                            let len = if shared { 2 } else { 4 };
                            let config = shared.then(|| (LossConfig { temperature: 0.5, margin: 0.2, ..Default::default() }, None));
                            let mut x = StepInput::from_packed(Tensor::from_data(TensorData::new(packed, [n]), &d), (2, 4, len), config, None);
                            x.user_features = Some(HostFeatureRows::gather(users.map(|u| u as usize), &u_off, &u_rows, &u_w, 4).to_device(&d));
                            x.item_features = Some(HostFeatureRows::gather(items.map(|i| i as usize), &i_off, &i_rows, &i_w, 5).to_device(&d));
                            let (m, l) = train_step(model, &mut optim, x, loss, if loss == LossKind::Bpr { 2 } else { 1 });
                            model = m;
                            losses.push(l.into_scalar::<f32>());
                        }
                        let what = format!("{kind:?} {loss:?} ids {ids} on {d:?}");
                        assert!(losses[29] < losses[0] * 0.9, "{what}: {losses:?}");
                        let (fu1, fi1, u1) = (table(&model.user_features), table(&model.item_features), rows(model.user.val()));
                        // MF by cosine would keep unused bias columns; none here: compare whole rows.
                        for r in 0..4 {
                            // Users 1 and 4 use rows 0, 1 and 0, 2; row 3 is nobody's.
                            assert_eq!(fu0[r] != fu1[r], r < 3, "{what}: user feature row {r}");
                        }
                        for r in 0..5 {
                            // Items 2, 5, 7, 3 use rows 2, 1, 3, 3; rows 0 and 4 are unused.
                            assert_eq!(fi0[r] != fi1[r], (1..4).contains(&r), "{what}: item feature row {r}");
                        }
                        if !ids {
                            assert_eq!(u0, u1, "{what}: a pure feature model's id rows stay zero");
                            assert!(u1.iter().flatten().all(|&v| v == 0.0));
                        }
                        all.push(losses);
                    }
                }
            }
            match &first_device {
                None => first_device = Some(all),
                Some(flex) => agree_early(flex, &all, &d),
            }
        }
    }
}
