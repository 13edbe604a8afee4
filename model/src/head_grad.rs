//! The head's loss and gradients for one training batch in one fused pass over the batch (flex).
//!
//! Through autodiff, a NeuMF step on flex is ~60 small tensor ops forward and backward, each
//! allocating (and in flex copying) its result, plus the graph's bookkeeping. Here the batch goes
//! through in chunks of 64 samples whose activations stay in L1: the MLP tower, the GMF product,
//! the output layer, the loss and the way back. The first MLP layer runs on the unique rows, as in
//! [`Head::forward_rows`]. Matmuls are register-blocked loops (AVX2 + FMA where the CPU has them).
//! The pass is a kernel behind burn's backend extension ([`HeadPass`]), as the row updates are.
//!
//! Every stage is cut into pieces fixed by the batch alone and spread over the caller and the
//! helper threads ([`crate::second_core`], sized by `--threads`): the first layer's forward in
//! blocks of unique rows; the tower in slices of [`SLICE_CHUNKS`] chunks, each summing its own
//! parameter gradients (added in slice order) and writing its samples' logit and first-layer
//! gradients; then each block of unique rows gathers its rows' gradients from its samples in batch
//! order. So the result is the same, bit for bit, on any number of threads.
//!
//! This is a second copy of the model's math (the first is [`Head::forward_rows`] and
//! `loss::batch_loss` under autodiff), so it runs only where [`supports`] says it is the same
//! function: that gate refuses every head, loss and batch outside what the pass implements, and
//! the step takes autodiff for them. `model/tests/fused_vs_autodiff.rs` runs both routes over
//! the configuration space and checks they agree up to f32 rounding wherever the gate lets the
//! fused pass in.

// The host pass runs on flex only; other builds keep it compiled and unused (and burn's
// generated routing never reads the kernel's arguments).
#![cfg_attr(not(feature = "flex"), allow(dead_code, unused_imports, unused_variables))]

use std::cell::Cell;
use std::sync::Mutex;

use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::config::{ModelKind, TableLayout};
use crate::loss::LossKind;
use crate::ncf::Head;
use crate::step::StepInput;

/// A batch's loss and gradients from [`head_grads`].
#[derive(Debug, Clone)]
pub struct HeadGrads {
    /// Mean loss over the batch: `[1]`.
    pub loss: Tensor<1>,
    /// Gradients of the unique user and item rows: `[u, width]`, `[i, width]`.
    pub user: Tensor<2>,
    pub item: Tensor<2>,
    /// Gradients of the head's parameters in visit order, flattened.
    pub params: Vec<Tensor<1>>,
}

/// What [`HeadPass::head_grads`] needs to know besides its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    pub layout: TableLayout,
    /// Output width of each MLP layer (the first takes both tables' MLP parts).
    pub widths: Vec<usize>,
    /// Whether there is an output layer (all but MF): it takes the GMF part and the last MLP
    /// layer's output to one logit.
    pub output: bool,
    /// Per dense layer (MLP layers, then the output layer): whether it has a bias.
    pub biases: Vec<bool>,
    pub loss: LossKind,
    /// BPR's group size (a positive and its negatives).
    pub group: usize,
}

impl HeadSpec {
    /// Each dense layer's (input, output) width, MLP layers first.
    fn dims(&self) -> Vec<(usize, usize)> {
        let l = self.layout;
        let mut d_in = 2 * l.mlp;
        let mut out: Vec<(usize, usize)> = self.widths.iter().map(|&d| (std::mem::replace(&mut d_in, d), d)).collect();
        if self.output {
            out.push((l.gmf + if self.widths.is_empty() { 0 } else { d_in }, 1));
        }
        out
    }
}

/// The head's loss and gradients as one kernel per step, through burn's backend-extension
/// point; flex only (other backends take autodiff).
///
/// # Shapes
/// - users: `[u, width]`, user_pos: `[batch]`, items: `[i, width]`, item_pos: `[batch]`, labels:
///   `[batch]`; params: the head's parameters in visit order, flattened and concatenated
/// - returns loss `[1]`, the user and item rows' gradients, and the parameters' gradients laid
///   out as `params`
#[backend_extension(Flex: cfg(feature = "flex"))]
pub trait HeadPass: burn::backend::Backend {
    #[allow(clippy::too_many_arguments)]
    fn head_grads(
        users: FloatTensor<Self>,
        user_pos: IntTensor<Self>,
        items: FloatTensor<Self>,
        item_pos: IntTensor<Self>,
        labels: FloatTensor<Self>,
        params: FloatTensor<Self>,
        spec: HeadSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether the fused pass computes this step exactly as autodiff would: the one gate between
/// the two routes. `Ok` where the pass is the same function as autodiff's [`Head::forward_rows`]
/// and `loss::batch_loss`; otherwise why not, and the step takes autodiff, which trains every
/// head, loss and batch. [`head_grads`] asks it first, so nothing reaches the pass around it.
///
/// The pass implements: flex; GMF, MLP, NeuMF and MF (dot product plus both biases); any
/// factors; MLP towers of any depth and widths with ReLU after every layer; any layer with or
/// without a bias; BCE (any labels) and BPR over whole groups of a positive and at least one
/// negative; any batch size, users and items repeated or not. It refuses:
/// - other backends: the pass is a flex kernel;
/// - softmax and CCL, and any loss over shared negatives: they score a `[batch × candidates]`
///   matrix ([`Head::score_matrix`]), the pass one logit per sample;
/// - `model.history`: user rows mixed with their history items' rows ([`Head::with_history`]);
/// - `model.dropout`: the tower's masks come from the device's generator inside autodiff's ops;
/// - `model.cosine`: L2-normalised factors ([`Head::factors`]);
/// - EASE, which has no training step ([`crate::ease::fit`]);
/// - BPR over a partial group, or groups of one;
/// - a head whose layers do not fit its table layout (none that `Ncf::init` builds): the pass
///   lays the parameters out from the layout.
///
/// Every field of the head, its layout and the step input is named here and every model and
/// loss kind matched without a wildcard, so a knob added to any of them stops this compiling
/// until it is decided here (and the test's generator, which builds every `ModelConfig` and
/// `LossConfig` field by name, enumerates it).
pub fn supports(head: &Head, input: &StepInput, loss: LossKind, group: usize) -> Result<(), &'static str> {
    let Head { mlp, output, layout, dropout, cosine, history } = head;
    let TableLayout { kind, gmf, mlp: half } = *layout;
    // Side features are composed into the rows before the pass (`user_rows`, `item_rows`): the
    // pass computes the gradient with respect to those rows whatever they hold.
    let StepInput { users, user_pos, items: _, item_pos: _, labels: _, shared, history: history_rows, ahead: _, user_features: _, item_features: _ } = input;
    if !crate::rows::on_flex(&users.device()) {
        return Err("not flex: the fused pass is a flex kernel");
    }
    match loss {
        LossKind::Bce | LossKind::Bpr => {}
        LossKind::Softmax | LossKind::Ccl => return Err("softmax and CCL score a matrix of shared candidates"),
    }
    if shared.is_some() {
        return Err("shared negatives: the loss scores a matrix of candidates");
    }
    let [b] = user_pos.dims();
    if loss == LossKind::Bpr && (group < 2 || !b.is_multiple_of(group)) {
        return Err("BPR over a partial group or groups of one");
    }
    if *history != 0.0 || history_rows.is_some() {
        return Err("model.history: user rows mixed with their history items' rows");
    }
    if *dropout != 0.0 {
        return Err("model.dropout: the tower's masks come from the device's generator");
    }
    if *cosine {
        return Err("model.cosine: L2-normalised factors");
    }
    // The parts each model has: GMF (or MF) factors, an MLP tower, an output layer.
    let (factors, tower, has_output) = match kind {
        ModelKind::Gmf => (true, false, true),
        ModelKind::Mlp => (false, true, true),
        ModelKind::Neumf => (true, true, true),
        ModelKind::Mf => (true, false, false),
        ModelKind::Ease => return Err("EASE is fitted in closed form, not trained by steps"),
    };
    let misfit = Err("a head whose layers do not fit its table layout");
    if (gmf > 0) != factors || (half > 0) != tower || mlp.is_empty() == tower {
        return misfit;
    }
    let fits = |l: &Linear, d_in: usize| {
        let [i, o] = l.weight.dims();
        (i == d_in && l.bias.as_ref().is_none_or(|b| b.dims() == [o])).then_some(o)
    };
    let mut d_in = 2 * half;
    for layer in mlp {
        let Some(d_out) = fits(layer, d_in) else { return misfit };
        d_in = d_out;
    }
    let last = if tower { d_in } else { 0 };
    match output {
        None if !has_output => Ok(()),
        Some(o) if has_output && fits(o, gmf + last) == Some(1) => Ok(()),
        _ => misfit,
    }
}

thread_local! {
    /// Fused passes run on this thread (see [`passes_on_this_thread`]).
    static PASSES: Cell<u64> = const { Cell::new(0) };
}

/// How many fused passes this thread has run: how a test tells which route a step took.
pub fn passes_on_this_thread() -> u64 {
    PASSES.with(Cell::get)
}

/// The fused pass where [`supports`] lets it in; otherwise why not, for the caller to take the
/// autodiff path.
///
/// # Shapes
/// - user_rows: `[u, width]`, item_rows: `[i, width]`: the rows `input.users`, `input.items`
///   index; `input.labels`: `[batch]` (unused by BPR, whose batch is groups of `group` samples,
///   the positive first)
pub fn head_grads(
    head: &Head,
    input: &StepInput,
    user_rows: &Tensor<2>,
    item_rows: &Tensor<2>,
    loss: LossKind,
    group: usize,
) -> Result<HeadGrads, &'static str> {
    use burn::backend::Dispatch;
    supports(head, input, loss, group)?;
    PASSES.with(|p| p.set(p.get() + 1));
    let StepInput { user_pos, item_pos, labels, .. } = input;
    let dense: Vec<_> = head.mlp.iter().chain(&head.output).collect();
    let flat = |t: Tensor<2>| {
        let n = t.shape().num_elements();
        t.reshape([n])
    };
    let params: Vec<Tensor<1>> = dense.iter().flat_map(|l| std::iter::once(flat(l.weight.val())).chain(l.bias.as_ref().map(|b| b.val()))).collect();
    let sizes: Vec<usize> = params.iter().map(|p| p.dims()[0]).collect();
    let spec = HeadSpec {
        layout: head.layout,
        widths: head.mlp.iter().map(|l| l.weight.dims()[1]).collect(),
        output: head.output.is_some(),
        biases: dense.iter().map(|l| l.bias.is_some()).collect(),
        loss,
        group,
    };
    let (loss, user, item, grads) = <Dispatch as HeadPass>::head_grads(
        user_rows.clone().into_dispatch(),
        user_pos.clone().into_dispatch(),
        item_rows.clone().into_dispatch(),
        item_pos.clone().into_dispatch(),
        labels.clone().into_dispatch(),
        if params.is_empty() { Tensor::zeros([0], &user_rows.device()) } else { Tensor::cat(params, 0) }.into_dispatch(),
        spec,
    );
    let grads = Tensor::<1>::from_dispatch(grads);
    let mut at = 0;
    let params = sizes
        .into_iter()
        .map(|n| {
            at += n;
            grads.clone().narrow(0, at - n, n)
        })
        .collect();
    Ok(HeadGrads { loss: Tensor::from_dispatch(loss), user: Tensor::from_dispatch(user), item: Tensor::from_dispatch(item), params })
}

#[cfg(feature = "flex")]
mod flex {
    use super::{Batch, Dense, HeadPass, HeadSpec};
    use crate::rows::flex::{contiguous, indices};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    impl HeadPass for Flex {
        fn head_grads(
            users: FlexTensor,
            user_pos: FlexTensor,
            items: FlexTensor,
            item_pos: FlexTensor,
            labels: FlexTensor,
            params: FlexTensor,
            spec: HeadSpec,
        ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
            let [nu, width] = [users.layout().shape()[0], users.layout().shape()[1]];
            let ni = items.layout().shape()[0];
            let (upos, ipos) = (indices(&user_pos, nu), indices(&item_pos, ni));
            let (users, items, labels, params) = (contiguous(&users), contiguous(&items), contiguous(&labels), contiguous(&params));
            // Weights and biases in visit order, each layer's weight then its bias.
            let mut rest = &params[..];
            let mut take = |n: usize| {
                let (here, after) = rest.split_at(n);
                rest = after;
                here
            };
            let mut layers: Vec<Dense> = spec
                .dims()
                .into_iter()
                .zip(&spec.biases)
                .map(|((d_in, d_out), &has_bias)| Dense { w: take(d_in * d_out), b: has_bias.then(|| take(d_out)), d_in, d_out })
                .collect();
            let output = spec.output.then(|| layers.pop().expect("the output layer is listed last"));
            let batch = Batch { user: &users, item: &items, width, user_pos: &upos, item_pos: &ipos, labels: &labels, loss: spec.loss, group: spec.group };
            let g = super::run(spec.layout, &layers, output.as_ref(), &batch);
            let host = |v: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(v, shape));
            let grads: Vec<f32> = g.params.concat();
            let n = grads.len();
            (host(vec![g.loss], vec![1]), host(g.user, vec![nu, width]), host(g.item, vec![ni, width]), host(grads, vec![n]))
        }
    }
}

/// A dense layer as host slices: weight `[d_in, d_out]` row-major, bias `[d_out]`.
struct Dense<'a> {
    w: &'a [f32],
    b: Option<&'a [f32]>,
    d_in: usize,
    d_out: usize,
}

/// One batch as host slices (see [`head_grads`]).
struct Batch<'a> {
    user: &'a [f32],
    item: &'a [f32],
    width: usize,
    user_pos: &'a [usize],
    item_pos: &'a [usize],
    labels: &'a [f32],
    loss: LossKind,
    group: usize,
}

/// [`HeadGrads`] on the host.
struct Grads {
    loss: f32,
    user: Vec<f32>,
    item: Vec<f32>,
    params: Vec<Vec<f32>>,
}

thread_local! {
    /// The first layer's outputs on the unique rows and their gradients, and the samples' logit
    /// and first-layer gradients, kept from one step to the next (about 2 MB at batch 4096):
    /// fresh buffers would be zeroed, or paged in, every step.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 6]> = Default::default();
}

/// Per layer, a chunk's activations or their gradients.
type PerLayer = Vec<Vec<f32>>;

thread_local! {
    /// A slice's chunk activations and their gradients per layer, and its logits, kept on each
    /// thread from one slice to the next: zeroing fresh ones for every slice cost more than the
    /// rest of the pass's bookkeeping.
    static CHUNK_SCRATCH: std::cell::RefCell<(PerLayer, PerLayer, Vec<f32>)> = Default::default();
}

/// Samples per chunk (rounded to whole BPR groups): a chunk's activations stay in L1.
const CHUNK: usize = 64;

fn run(l: TableLayout, layers: &[Dense], output: Option<&Dense>, x: &Batch) -> Grads {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { run_fma(l, layers, output, x) };
    }
    run_with::<false>(l, layers, output, x)
}

/// [`run_with`] compiled for AVX2 with fused multiply-adds.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_fma(l: TableLayout, layers: &[Dense], output: Option<&Dense>, x: &Batch) -> Grads {
    run_with::<true>(l, layers, output, x)
}

/// One block of unique rows through the first layer: `out = rows[.., ..m] · wt` (`rows` `w`
/// apart, `wt` `[m, d1]`).
#[inline(always)]
fn first_forward<const F: bool>(rows: &[f32], w: usize, m: usize, wt: &[f32], d1: usize, out: &mut [f32]) {
    gemm::<F>(rows, w, out.len() / d1, m, wt, d1, out, d1, false)
}

/// One block of `n` unique rows back through the first layer: the block's part of the weight
/// gradient, `dw += rows[.., ..m]ᵀ · dp`, and the rows' gradient, `out[.., ..m] = dp · wt`
/// (`wt` `[d1, m]`; `rows` and `out` `w` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn first_backward<const F: bool>(rows: &[f32], w: usize, n: usize, m: usize, dp: &[f32], d1: usize, wt: &[f32], out: &mut [f32], dw: &mut [f32]) {
    gemm_tn::<F>(rows, w, dp, d1, n, m, d1, dw);
    gemm::<F>(dp, d1, n, d1, wt, m, out, w, false);
}

/// [`first_forward`] compiled with AVX2 and FMA, for the blocks a helper thread may run: a
/// closure does not inherit [`run_fma`]'s target features, and `mul_add` outside them is a libm
/// call.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn first_forward_fma(rows: &[f32], w: usize, m: usize, wt: &[f32], d1: usize, out: &mut [f32]) {
    first_forward::<true>(rows, w, m, wt, d1, out)
}

/// `a·b + c`, fused where `F` (then compiled with FMA, see [`run_fma`]).
#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// `s[r] += x(r) · row` for each of the `R` accumulator rows: the register block's inner step.
#[inline(always)]
fn fma_rows<const F: bool, const N: usize, const R: usize>(s: &mut [[f32; N]; R], x: impl Fn(usize) -> f32, row: &[f32; N]) {
    for (r, sr) in s.iter_mut().enumerate() {
        let x = x(r);
        for o in 0..N {
            sr[o] = fma::<F>(x, row[o], sr[o]);
        }
    }
}

/// `c[i, ..n] (+)= Σ_k a[i, k] · b[k, ..n]` for `i < m`: `a`'s rows are `lda` apart, `c`'s
/// `ldc`, `b` is `[k, n]` contiguous; `acc` adds to `c` instead of overwriting it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<const F: bool>(a: &[f32], lda: usize, m: usize, k: usize, b: &[f32], n: usize, c: &mut [f32], ldc: usize, acc: bool) {
    /// `R` output rows at once, held in registers: `R·N/8` independent FMA chains hide the
    /// FMA latency (one row of 8 or 16 columns alone would wait on it).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rows<const F: bool, const N: usize, const R: usize>(a: &[f32], lda: usize, i: usize, k: usize, b: &[f32], c: &mut [f32], ldc: usize, acc: bool) {
        let mut s = [[0.0f32; N]; R];
        if acc {
            for (r, sr) in s.iter_mut().enumerate() {
                sr.copy_from_slice(&c[(i + r) * ldc..(i + r) * ldc + N]);
            }
        }
        for kk in 0..k {
            let row: &[f32; N] = b[kk * N..kk * N + N].try_into().expect("N columns");
            fma_rows::<F, N, R>(&mut s, |r| a[(i + r) * lda + kk], row);
        }
        for (r, sr) in s.iter().enumerate() {
            c[(i + r) * ldc..(i + r) * ldc + N].copy_from_slice(sr);
        }
    }
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fixed<const F: bool, const N: usize, const R: usize>(a: &[f32], lda: usize, m: usize, k: usize, b: &[f32], c: &mut [f32], ldc: usize, acc: bool) {
        let full = m / R * R;
        for i in (0..full).step_by(R) {
            rows::<F, N, R>(a, lda, i, k, b, c, ldc, acc);
        }
        for i in full..m {
            rows::<F, N, 1>(a, lda, i, k, b, c, ldc, acc);
        }
    }
    match n {
        8 => fixed::<F, 8, 8>(a, lda, m, k, b, c, ldc, acc),
        16 => fixed::<F, 16, 4>(a, lda, m, k, b, c, ldc, acc),
        32 => fixed::<F, 32, 2>(a, lda, m, k, b, c, ldc, acc),
        64 => fixed::<F, 64, 1>(a, lda, m, k, b, c, ldc, acc),
        _ => {
            for i in 0..m {
                let out = &mut c[i * ldc..i * ldc + n];
                if !acc {
                    out.fill(0.0);
                }
                for (kk, &x) in a[i * lda..i * lda + k].iter().enumerate() {
                    for (o, &w) in out.iter_mut().zip(&b[kk * n..kk * n + n]) {
                        *o = fma::<F>(x, w, *o);
                    }
                }
            }
        }
    }
}

/// `c[k, n] += aᵀ · b` over `m` rows: `a` is `[m, k]` with rows `lda` apart, `b` `[m, n]` with
/// rows `ldb` apart, `c` `[k, n]` contiguous.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_tn<const F: bool>(a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, k: usize, n: usize, c: &mut [f32]) {
    /// Rows `kk..kk + R` of `c` in registers over rows `i0..i1` (see [`gemm`]'s `rows`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rows<const F: bool, const N: usize, const R: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, i0: usize, i1: usize, kk: usize, c: &mut [f32]) {
        let mut s = [[0.0f32; N]; R];
        for (r, sr) in s.iter_mut().enumerate() {
            sr.copy_from_slice(&c[(kk + r) * N..(kk + r) * N + N]);
        }
        for i in i0..i1 {
            let row: &[f32; N] = b[i * ldb..i * ldb + N].try_into().expect("N columns");
            fma_rows::<F, N, R>(&mut s, |r| a[i * lda + kk + r], row);
        }
        for (r, sr) in s.iter().enumerate() {
            c[(kk + r) * N..(kk + r) * N + N].copy_from_slice(sr);
        }
    }
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fixed<const F: bool, const N: usize, const R: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, k: usize, c: &mut [f32]) {
        // Blocks of rows, so that b's block stays in L1 while every column of a passes over it.
        let full = k / R * R;
        for i0 in (0..m).step_by(CHUNK) {
            let i1 = (i0 + CHUNK).min(m);
            for kk in (0..full).step_by(R) {
                rows::<F, N, R>(a, lda, b, ldb, i0, i1, kk, c);
            }
            for kk in full..k {
                rows::<F, N, 1>(a, lda, b, ldb, i0, i1, kk, c);
            }
        }
    }
    match n {
        8 => fixed::<F, 8, 8>(a, lda, b, ldb, m, k, c),
        16 => fixed::<F, 16, 4>(a, lda, b, ldb, m, k, c),
        32 => fixed::<F, 32, 2>(a, lda, b, ldb, m, k, c),
        64 => fixed::<F, 64, 1>(a, lda, b, ldb, m, k, c),
        _ => {
            for i in 0..m {
                for kk in 0..k {
                    let x = a[i * lda + kk];
                    for (o, &w) in c[kk * n..kk * n + n].iter_mut().zip(&b[i * ldb..i * ldb + n]) {
                        *o = fma::<F>(x, w, *o);
                    }
                }
            }
        }
    }
}

/// Unique rows per block of the first layer's and the rows' gradient work, and the fewest rows
/// (users and items) worth sharing the first layer's forward with the helper threads.
const ROW_BLOCK: usize = 256;
const MIN_SHARED_ROWS: usize = 2048;

/// Calls `f(k)` once for every `k < n`: on this thread and the helper threads when `share` (flex
/// builds), here otherwise.
fn spread(n: usize, share: bool, f: impl Fn(usize) + Sync) {
    #[cfg(feature = "flex")]
    if share {
        return crate::second_core::for_each(n, f);
    }
    let _ = share;
    (0..n).for_each(f)
}

/// `w` `[r, c]` row-major, transposed: `[c, r]`.
fn transposed(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = w[i * c + j];
        }
    }
    t
}

/// `acc += Σ rows`, `rows` being rows of `acc.len()` values: bias gradients, scatter-adds.
#[inline(always)]
fn add_rows(acc: &mut [f32], rows: &[f32]) {
    for row in rows.chunks_exact(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, r)| *a += r);
    }
}

/// `(ln(1 + eˣ), σ(x))` from one exponential, stable for large `|x|`.
#[inline(always)]
fn softplus_sigmoid(x: f32) -> (f32, f32) {
    let e = (-x.abs()).exp();
    let inv = 1.0 / (1.0 + e);
    (x.max(0.0) + e.ln_1p(), if x >= 0.0 { inv } else { e * inv })
}

/// Chunks per slice of the batch: the pieces the pass spreads over threads. Each slice has
/// parameter-gradient buffers of its own, summed in slice order, and writes its samples' logit
/// and first-layer gradients to its own range, so the result does not depend on the threads.
const SLICE_CHUNKS: usize = 4;

/// What every slice of the batch reads (see [`slice_pass`]).
struct Pass<'a> {
    l: TableLayout,
    layers: &'a [Dense<'a>],
    x: &'a Batch<'a>,
    /// The first MLP layer's outputs on the unique user and item rows (before ReLU).
    pu: &'a [f32],
    pi: &'a [f32],
    /// Later layers' weights transposed, `[d_out, d_in]` (empty for the first).
    back: &'a [Vec<f32>],
    widths: &'a [usize],
    /// The output layer (none for MF).
    output: Option<&'a Dense<'a>>,
    chunk: usize,
    /// 1 / the number of loss terms.
    scale: f32,
}

impl<'a> Pass<'a> {
    /// The output layer's weight and bias (empty and 0 for MF).
    fn out(&self) -> (&'a [f32], f32) {
        self.output.map_or((&[][..], 0.0), |o| (o.w, o.b.map_or(0.0, |b| b[0])))
    }
}

/// Gradients of the dense layers in visit order, each a weight and, where the layer has one, a
/// bias.
type LayerGrads = Vec<(Vec<f32>, Option<Vec<f32>>)>;

/// Zeroed [`LayerGrads`] for the MLP layers and the output layer; the first MLP layer's entry
/// is left empty unless `first` (the slices leave that layer to the row blocks).
fn zeroed_grads(layers: &[Dense], output: Option<&Dense>, first: bool) -> LayerGrads {
    let zeros = |d: &Dense| (vec![0f32; d.d_in * d.d_out], d.b.map(|_| vec![0f32; d.d_out]));
    layers.iter().enumerate().map(|(k, d)| if k > 0 || first { zeros(d) } else { (Vec::new(), None) }).chain(output.map(zeros)).collect()
}

/// A slice's loss (summed over its terms, unscaled) and its part of the gradients of every dense
/// layer but the first, in visit order (the first layer's entry stays empty).
struct SliceOut {
    loss: f64,
    grads: LayerGrads,
}

/// Samples `s0..s0 + dl.len()` forward, through the loss and back down the tower, in chunks whose
/// activations stay in L1. Writes each sample's logit gradient to `dl` and its gradient at the
/// first layer's output to `dz0` (`[samples, d1]`); the row gradients are gathered from those by
/// [`rows_back`].
#[inline(always)]
fn slice_pass<const F: bool>(p: &Pass, s0: usize, dl_out: &mut [f32], dz0: &mut [f32]) -> SliceOut {
    let (x, layers, widths) = (p.x, p.layers, p.widths);
    let (g, m, w) = (p.l.gmf, p.l.mlp, x.width);
    let mf = p.l.kind == ModelKind::Mf;
    let d1 = widths.first().copied().unwrap_or(0);
    let last = widths.last().copied().unwrap_or(0);
    let (wo, bo) = p.out();
    let mut grads = zeroed_grads(layers, p.output, false);
    // A chunk's activations (after ReLU) and their gradients, per layer.
    // (Every value is written before it is read.)
    let (mut h, mut dz, mut logit) = CHUNK_SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for per_layer in [&mut h, &mut dz] {
        per_layer.resize_with(widths.len(), Vec::new);
        per_layer.iter_mut().zip(widths).for_each(|(v, &d)| v.resize(p.chunk * d, 0.0));
    }
    logit.resize(p.chunk, 0.0);
    let mut loss = 0f64;

    for c0 in (0..dl_out.len()).step_by(p.chunk) {
        let cn = p.chunk.min(dl_out.len() - c0);
        let dl = &mut dl_out[c0..c0 + cn];
        let at = |s: usize| (x.user_pos[s0 + c0 + s], x.item_pos[s0 + c0 + s]);
        // Forward.
        if m > 0 {
            for s in 0..cn {
                let (u, i) = at(s);
                let row = &mut h[0][s * d1..s * d1 + d1];
                for ((o, a), b) in row.iter_mut().zip(&p.pu[u * d1..u * d1 + d1]).zip(&p.pi[i * d1..i * d1 + d1]) {
                    *o = (a + b).max(0.0);
                }
            }
            for k in 1..layers.len() {
                let (before, after) = h.split_at_mut(k);
                let (d_in, d_out) = (widths[k - 1], widths[k]);
                gemm::<F>(&before[k - 1], d_in, cn, d_in, layers[k].w, d_out, &mut after[0], d_out, false);
                let bias = layers[k].b;
                for row in after[0][..cn * d_out].chunks_exact_mut(d_out) {
                    match bias {
                        Some(bias) => row.iter_mut().zip(bias).for_each(|(r, b)| *r = (*r + b).max(0.0)),
                        None => row.iter_mut().for_each(|r| *r = r.max(0.0)),
                    }
                }
            }
        }
        for s in 0..cn {
            let (u, i) = at(s);
            let (ur, ir) = (&x.user[u * w..u * w + w], &x.item[i * w..i * w + w]);
            logit[s] = if mf {
                ur[..g].iter().zip(&ir[..g]).fold(ur[g] + ir[g], |z, (a, b)| fma::<F>(*a, *b, z))
            } else {
                let mut z = bo;
                for f in 0..g {
                    z = fma::<F>(ur[f] * ir[f], wo[f], z);
                }
                if m > 0 {
                    for (a, c) in h[h.len() - 1][s * last..s * last + last].iter().zip(&wo[g..]) {
                        z = fma::<F>(*a, *c, z);
                    }
                }
                z
            };
        }
        // The loss and its gradient at each logit.
        match x.loss {
            LossKind::Bce => {
                for s in 0..cn {
                    let (z, y) = (logit[s], x.labels[s0 + c0 + s]);
                    // (1-y)·z - log σ(z) = (1-y)·z + softplus(-z); σ(z) = 1 - σ(-z)
                    let (sp, sg) = softplus_sigmoid(-z);
                    loss += ((1.0 - y) * z + sp) as f64;
                    dl[s] = (1.0 - sg - y) * p.scale;
                }
            }
            LossKind::Bpr => {
                dl.fill(0.0);
                for a in (0..cn).step_by(x.group) {
                    for q in a + 1..a + x.group {
                        // -log σ(pos - neg) = softplus(neg - pos)
                        let (sp, sg) = softplus_sigmoid(logit[q] - logit[a]);
                        loss += sp as f64;
                        let s = sg * p.scale;
                        dl[a] -= s;
                        dl[q] += s;
                    }
                }
            }
            LossKind::Softmax | LossKind::Ccl => unreachable!("the fused head trains per-sample losses only"),
        }
        if mf {
            continue;
        }
        // Back through the output layer (the GMF product's rows are [`rows_back`]'s).
        let n_out = grads.len() - 1;
        for s in 0..cn {
            let (u, i) = at(s);
            let d = dl[s];
            let (ur, ir) = (&x.user[u * w..u * w + w], &x.item[i * w..i * w + w]);
            let (dwo, dbo) = &mut grads[n_out];
            if let Some(dbo) = dbo {
                dbo[0] += d;
            }
            for f in 0..g {
                dwo[f] = fma::<F>(d, ur[f] * ir[f], dwo[f]);
            }
            if m > 0 {
                let top = h.len() - 1;
                let (ha, dza) = (&h[top][s * last..s * last + last], &mut dz[top][s * last..s * last + last]);
                for o in 0..last {
                    dwo[g + o] = fma::<F>(d, ha[o], dwo[g + o]);
                    dza[o] = if ha[o] > 0.0 { d * wo[g + o] } else { 0.0 };
                }
            }
        }
        if m == 0 {
            continue;
        }
        // Back down the tower.
        for k in (1..layers.len()).rev() {
            let (d_in, d_out) = (widths[k - 1], widths[k]);
            let (dw, db) = &mut grads[k];
            gemm_tn::<F>(&h[k - 1], d_in, &dz[k], d_out, cn, d_in, d_out, dw);
            if let Some(db) = db {
                add_rows(db, &dz[k][..cn * d_out]);
            }
            let (below, here) = dz.split_at_mut(k);
            gemm::<F>(&here[0], d_out, cn, d_out, &p.back[k], d_in, &mut below[k - 1], d_in, false);
            for (dzr, hr) in below[k - 1][..cn * d_in].iter_mut().zip(&h[k - 1][..cn * d_in]) {
                if *hr <= 0.0 {
                    *dzr = 0.0;
                }
            }
        }
        dz0[c0 * d1..(c0 + cn) * d1].copy_from_slice(&dz[0][..cn * d1]);
    }
    CHUNK_SCRATCH.with(|s| *s.borrow_mut() = (h, dz, logit));
    SliceOut { loss, grads }
}

/// [`slice_pass`] compiled with AVX2 and FMA, for the slices a helper thread runs (a closure does
/// not inherit [`run_fma`]'s target features).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn slice_pass_fma(p: &Pass, s0: usize, dl: &mut [f32], dz0: &mut [f32]) -> SliceOut {
    slice_pass::<true>(p, s0, dl, dz0)
}

/// One side's rows (users or items) for [`rows_back`].
struct Side<'a> {
    /// This side's unique rows and the other side's, `width` apart.
    rows: &'a [f32],
    other: &'a [f32],
    /// Per sample: its row on the other side.
    other_pos: &'a [usize],
    /// This side's samples by row, in batch order (see [`by_row`]).
    samples: &'a [u32],
    start: &'a [usize],
    /// This side's half of the first layer's weight, transposed: `[d1, m]`.
    wt: &'a [f32],
}

/// The samples of each of `n` rows in batch order: row `r`'s are `samples[start[r]..start[r + 1]]`.
fn by_row(pos: &[usize], n: usize) -> (Vec<u32>, Vec<usize>) {
    let mut start = vec![0usize; n + 1];
    for &r in pos {
        start[r + 1] += 1;
    }
    for r in 0..n {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut samples = vec![0u32; pos.len()];
    for (s, &r) in pos.iter().enumerate() {
        samples[fill[r]] = s as u32;
        fill[r] += 1;
    }
    (samples, start)
}

/// The gradients of rows `r0..r0 + n` of one side: the GMF (or MF) product's part summed over
/// their samples in batch order, then (with a tower) the first layer's part from the sum of their
/// samples' `dz0` rows (into `dp`), adding the block's part of the first layer's weight gradient
/// to `dw`. `out` is the block's rows of the side's gradient, `dp` of its first-layer gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_back<const F: bool>(p: &Pass, side: &Side, dl: &[f32], dz0: &[f32], r0: usize, out: &mut [f32], dp: &mut [f32], dw: &mut [f32]) {
    let (g, m, w) = (p.l.gmf, p.l.mlp, p.x.width);
    let mf = p.l.kind == ModelKind::Mf;
    let d1 = p.widths.first().copied().unwrap_or(0);
    let (wo, _) = p.out();
    let n = out.len() / w;
    for r in 0..n {
        let gr = &mut out[r * w..r * w + w];
        for &s in &side.samples[side.start[r0 + r]..side.start[r0 + r + 1]] {
            let s = s as usize;
            let d = dl[s];
            let o = side.other_pos[s];
            let other = &side.other[o * w..o * w + w];
            if mf {
                for f in 0..g {
                    gr[f] = fma::<F>(d, other[f], gr[f]);
                }
                gr[g] += d;
            } else {
                for f in 0..g {
                    gr[f] = fma::<F>(d * wo[f], other[f], gr[f]);
                }
            }
            if m > 0 {
                add_rows(&mut dp[r * d1..r * d1 + d1], &dz0[s * d1..s * d1 + d1]);
            }
        }
    }
    if m > 0 {
        first_backward::<F>(&side.rows[r0 * w + g..], w, n, m, dp, d1, side.wt, &mut out[g..], dw);
    }
}

/// [`rows_back`] compiled with AVX2 and FMA (see [`slice_pass_fma`]).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_back_fma(p: &Pass, side: &Side, dl: &[f32], dz0: &[f32], r0: usize, out: &mut [f32], dp: &mut [f32], dw: &mut [f32]) {
    rows_back::<true>(p, side, dl, dz0, r0, out, dp, dw)
}

/// `whole` cut into consecutive pieces of `len(k)` values for `k < n` (pieces may be empty).
fn pieces(mut whole: &mut [f32], n: usize, len: impl Fn(usize) -> usize) -> Vec<&mut [f32]> {
    (0..n)
        .map(|k| {
            let (here, rest) = std::mem::take(&mut whole).split_at_mut(len(k));
            whole = rest;
            here
        })
        .collect()
}

#[inline(always)]
fn run_with<const F: bool>(l: TableLayout, layers: &[Dense], output: Option<&Dense>, x: &Batch) -> Grads {
    let (g, m, w) = (l.gmf, l.mlp, x.width);
    let (nu, ni) = (x.user.len() / w, x.item.len() / w);
    let b = x.user_pos.len();
    let mut du = vec![0f32; nu * w];
    let mut di = vec![0f32; ni * w];

    // The first MLP layer on the unique rows, its bias folded into the user side.
    let d1 = layers.first().map_or(0, |d| d.d_out);
    let [mut pu, mut pi, mut dpu, mut dpi, mut dl, mut dz0] = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // Overwritten by the first layer's forward below; its gradients accumulate from zero.
    pu.resize(nu * d1, 0.0);
    pi.resize(ni * d1, 0.0);
    for (g, n) in [(&mut dpu, nu), (&mut dpi, ni)] {
        g.clear();
        g.resize(n * d1, 0.0);
    }
    // Blocks of unique rows, shared with the helpers when there are enough of them.
    let share = nu + ni >= MIN_SHARED_ROWS;
    if m > 0 {
        let first = &layers[0];
        let (wa, wb) = first.w.split_at(m * d1);
        let blocks: Vec<_> = (pu.chunks_mut(ROW_BLOCK * d1).enumerate().map(|(k, o)| (x.user, wa, k, Mutex::new(o))))
            .chain(pi.chunks_mut(ROW_BLOCK * d1).enumerate().map(|(k, o)| (x.item, wb, k, Mutex::new(o))))
            .collect();
        spread(blocks.len(), share, |j| {
            let (rows, wt, k, out) = &blocks[j];
            let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
            let rows = &rows[k * ROW_BLOCK * w + g..];
            #[cfg(target_arch = "x86_64")]
            if F {
                // SAFETY: `F` only under `run_fma`, which runs where the CPU has AVX2 and FMA.
                return unsafe { first_forward_fma(rows, w, m, wt, d1, &mut out) };
            }
            first_forward::<F>(rows, w, m, wt, d1, &mut out);
        });
        if let Some(bias) = first.b {
            pu.chunks_exact_mut(d1).for_each(|row| row.iter_mut().zip(bias).for_each(|(r, b)| *r += b));
        }
    }
    // Later layers' weights transposed, for the way back: `[d_out, d_in]` (the first layer's
    // two halves are transposed for its own backward, below).
    let back: Vec<Vec<f32>> = layers.iter().enumerate().map(|(k, d)| if k == 0 { Vec::new() } else { transposed(d.w, d.d_in, d.d_out) }).collect();
    let widths: Vec<usize> = layers.iter().map(|d| d.d_out).collect();
    let chunk = if x.loss == LossKind::Bpr { x.group * (CHUNK / x.group).max(1) } else { CHUNK };
    let pairs = if x.loss == LossKind::Bpr { (b / x.group) * (x.group - 1) } else { b };
    let scale = 1.0 / pairs as f32;
    let pass = Pass { l, layers, x, pu: &pu, pi: &pi, back: &back, widths: &widths, output, chunk, scale };

    // The batch in slices, on as many threads as there are slices and helpers.
    let slice = chunk * SLICE_CHUNKS;
    let n_slices = b.div_ceil(slice);
    // Every value is written by its slice.
    dl.resize(b, 0.0);
    dz0.resize(b * d1, 0.0);
    let len = |k: usize| slice.min(b - k * slice);
    let parts: Vec<_> = pieces(&mut dl, n_slices, len).into_iter().zip(pieces(&mut dz0, n_slices, |k| len(k) * d1)).map(|p| Mutex::new((p, None))).collect();
    spread(n_slices, n_slices > 1, |k| {
        let mut part = parts[k].lock().unwrap_or_else(|e| e.into_inner());
        let ((dl, dz0), out) = &mut *part;
        #[cfg(target_arch = "x86_64")]
        if F {
            // SAFETY: as in the forward's blocks.
            *out = Some(unsafe { slice_pass_fma(&pass, k * slice, dl, dz0) });
            return;
        }
        *out = Some(slice_pass::<F>(&pass, k * slice, dl, dz0));
    });
    // The slices' sums, in slice order.
    let mut loss = 0f64;
    let mut grads = zeroed_grads(layers, output, true);
    for part in parts {
        let out = part.into_inner().unwrap_or_else(|e| e.into_inner()).1.expect("every slice ran");
        loss += out.loss;
        for ((w, b), (pw, pb)) in grads.iter_mut().zip(out.grads) {
            add_rows(w, &pw);
            if let (Some(b), Some(pb)) = (b, pb) {
                add_rows(b, &pb);
            }
        }
    }

    // The rows' gradients, in blocks of unique rows: each row's samples in batch order.
    let (user_samples, user_start) = by_row(x.user_pos, nu);
    let (item_samples, item_start) = by_row(x.item_pos, ni);
    let (wa, wb) = match layers.first() {
        Some(first) => {
            let (wa, wb) = first.w.split_at(m * d1);
            (transposed(wa, m, d1), transposed(wb, m, d1))
        }
        None => (Vec::new(), Vec::new()),
    };
    let sides = [
        Side { rows: x.user, other: x.item, other_pos: x.item_pos, samples: &user_samples, start: &user_start, wt: &wa },
        Side { rows: x.item, other: x.user, other_pos: x.user_pos, samples: &item_samples, start: &item_start, wt: &wb },
    ];
    let (user_blocks, item_blocks) = (nu.div_ceil(ROW_BLOCK), ni.div_ceil(ROW_BLOCK));
    let rows_in = |k: usize, n: usize| ROW_BLOCK.min(n - k * ROW_BLOCK);
    let blocks: Vec<_> = (pieces(&mut du, user_blocks, |k| rows_in(k, nu) * w)
        .into_iter()
        .zip(pieces(&mut dpu, user_blocks, |k| rows_in(k, nu) * d1))
        .enumerate()
        .map(|(k, o)| (0, k, o)))
    .chain(
        pieces(&mut di, item_blocks, |k| rows_in(k, ni) * w)
            .into_iter()
            .zip(pieces(&mut dpi, item_blocks, |k| rows_in(k, ni) * d1))
            .enumerate()
            .map(|(k, o)| (1, k, o)),
    )
    .map(|(side, k, (out, dp))| (side, k, Mutex::new((out, dp, vec![0f32; m * d1]))))
    .collect();
    spread(blocks.len(), share || n_slices > 1, |j| {
        let (side, k, slot) = &blocks[j];
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let (out, dp, dw) = &mut *slot;
        #[cfg(target_arch = "x86_64")]
        if F {
            // SAFETY: as in the forward's blocks.
            return unsafe { rows_back_fma(&pass, &sides[*side], &dl, &dz0, k * ROW_BLOCK, out, dp, dw) };
        }
        rows_back::<F>(&pass, &sides[*side], &dl, &dz0, k * ROW_BLOCK, out, dp, dw);
    });
    if m > 0 {
        // The first layer's weight gradient, block by block in order; its bias's from the user
        // rows (where the bias was folded in).
        let (dw1, db1) = &mut grads[0];
        for (side, _, slot) in blocks {
            let (_, _, part) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            let at = side * m * d1;
            add_rows(&mut dw1[at..at + m * d1], &part);
        }
        if let Some(db1) = db1 {
            add_rows(db1, &dpu);
        }
    } else {
        drop(blocks);
    }
    SCRATCH.with(|s| *s.borrow_mut() = [pu, pi, dpu, dpi, dl, dz0]);
    Grads { loss: (loss * scale as f64) as f32, user: du, item: di, params: grads.into_iter().flat_map(|(w, b)| std::iter::once(w).chain(b)).collect() }
}
