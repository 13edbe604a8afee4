//! Fused row updates of the embedding tables, through burn's backend-extension point.
//!
//! The composed row-sparse Adam in [`crate::optim`] is ~30 tensor ops per table per step: 8 row
//! gathers and scatters and a chain of element-wise passes, each allocating its result. Here one
//! pass walks the batch's unique rows and updates the table, both moments and the last-step
//! stamp in place, reading each row once: native Rust on flex (prefetching, AVX2 when the CPU has
//! it), a CubeCL kernel on the cubecl backends (wgpu, CUDA). Backends listed in [`RowUpdate`]'s
//! extension attribute run these kernels; every other device (ndarray) and `optim.fused = false`
//! keep the composed path. Both give the same numbers up to f32 rounding (`optim`'s fused tests,
//! on flex and on wgpu).

use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{Device, Int, Tensor};

/// The scalars of one row update. `t` is the optimizer's step count including this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowStep {
    pub t: f64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the rows' gradient.
    pub l2: f64,
}

impl RowStep {
    /// Per-row Adam factors for a row last updated at step `last` (0 = never): the closed-form
    /// catch-up of the skipped steps and the moment decays (see the module docs of
    /// [`crate::optim`]). Shared by every backend's kernel so they agree to the last bit on
    /// the per-row part; a kernel computing many rows builds the [`CatchUp`] once.
    pub fn row_factors(&self, last: f64) -> RowFactors {
        CatchUp::new(self).factors(last)
    }

    /// This step's bias-corrected step size and `1 / sqrt(1 - β2ᵗ)`.
    pub fn corrections(&self) -> (f64, f64) {
        let t = self.t as i32;
        (self.lr / (1.0 - self.beta1.powi(t)), 1.0 / (1.0 - self.beta2.powi(t)).sqrt())
    }
}

/// One step's constants of [`RowStep::row_factors`], so that each row costs only what depends
/// on it: on a large catalogue nearly every row of a batch comes back after a different number
/// of skipped steps, and the factors are computed per row.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    t: f64,
    lr: f64,
    b1: f64,
    b2: f64,
    ln_b1: f64,
    ln_b2: f64,
    /// r = β1 / sqrt(β2), ln r and 1 - r.
    r: f64,
    ln_r: f64,
    one_r: f64,
}

impl CatchUp {
    pub fn new(s: &RowStep) -> Self {
        let r = s.beta1 / s.beta2.sqrt();
        Self { t: s.t, lr: s.lr, b1: s.beta1, b2: s.beta2, ln_b1: s.beta1.ln(), ln_b2: s.beta2.ln(), r, ln_r: r.ln(), one_r: 1.0 - r }
    }

    /// See [`RowStep::row_factors`].
    #[inline]
    pub fn factors(&self, last: f64) -> RowFactors {
        let (b1, b2) = (self.b1, self.b2);
        let k = self.t - 1.0 - last;
        if k <= 0.0 {
            // Updated on the previous step: plain Adam.
            return RowFactors { catch_up: 0.0, decay1: b1, decay2: b2 };
        }
        let (b1k, b2k) = ((k * self.ln_b1).exp(), (k * self.ln_b2).exp());
        // rᵏ by its own exp: β1ᵏ / sqrt(β2ᵏ) is 0/0 once both underflow (a row skipped for
        // ~750k steps at β2 = 0.999, e.g. one no batch has held yet).
        let rk = (k * self.ln_r).exp();
        let geo = (1.0 - rk) * self.r / self.one_r;
        let j_bar = ((1.0 - rk) - k * rk * self.one_r) / ((1.0 - rk) * self.one_r).max(1e-12);
        let t_mid = last + j_bar;
        // 1 - βˣ; βˣ below 2⁻⁵⁴ leaves exactly 1 in f64, so its exp is skipped.
        let one_minus = |ln_b: f64| if t_mid * ln_b < -38.0 { 1.0 } else { (1.0 - (t_mid * ln_b).exp()).max(1e-12) };
        let (c1, c2) = (one_minus(self.ln_b1), one_minus(self.ln_b2));
        RowFactors { catch_up: geo * c2.sqrt() / c1 * self.lr, decay1: b1k * b1, decay2: b2k * b2 }
    }
}

/// Per-row factors of a row-sparse Adam update, see [`RowStep::row_factors`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowFactors {
    /// Multiplies `m / (sqrt(v) + ε)` for the moves of the skipped steps.
    pub catch_up: f64,
    /// `β1^(k+1)` and `β2^(k+1)` for `k` skipped steps.
    pub decay1: f64,
    pub decay2: f64,
}

/// Row-sparse table updates as one kernel per table and step.
///
/// # Shapes
/// - table, m, v: `[n, width]`; last: `[n]`; rows: `[r]` (unique); grad: `[r, width]`
#[backend_extension(Flex: cfg(feature = "flex"), Cube: cfg(feature = "cube"))]
pub trait RowUpdate: burn::backend::Backend {
    /// Row-sparse Adam with catch-up at `rows`; returns the updated (table, m, v, last).
    fn adam_rows(
        table: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        last: FloatTensor<Self>,
        rows: IntTensor<Self>,
        grad: FloatTensor<Self>,
        step: RowStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The table's rows at `rows`, in order: `[r, width]`. The same as `select` on dim 0, with
    /// the next rows prefetched while one is copied (a large table's rows are cache misses).
    fn gather_rows(table: FloatTensor<Self>, rows: IntTensor<Self>) -> FloatTensor<Self>;

    /// SGD at `rows`: `table[rows] -= lr · (grad + l2 · table[rows])`.
    fn sgd_rows(table: FloatTensor<Self>, rows: IntTensor<Self>, grad: FloatTensor<Self>, step: RowStep) -> FloatTensor<Self>;
}

/// Whether `device` is a flex device (in a build with flex's kernels).
pub(crate) fn on_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Whether `device` runs the fused kernels (otherwise the caller composes tensor ops).
pub fn fused_on(device: &Device) -> bool {
    if on_flex(device) {
        return true;
    }
    #[cfg(feature = "cube")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Tells the flex kernels that `table` will be updated at about `rows` rows later in this step,
/// so that the second thread is awake by then if it is to help (see [`crate::second_core`]).
pub fn expect_update(table: &Tensor<2>, rows: usize) {
    if update_beside(table, rows) {
        #[cfg(feature = "flex")]
        crate::second_core::expect_work(std::time::Duration::from_millis(5));
    }
}

/// Whether the fused Adam update of `table` at `rows` unique rows had best start on the second
/// thread while this one does the step's other updates ([`beside`]), that thread having read
/// the rows into its caches during the forward and backward passes ([`gather_ahead`]): flex,
/// and enough rows to pay for the hand-over. (NeuMF factor 8, batch 4096, ML-1M's 3706 items:
/// 1.83 → 1.77 ms/step; a table past the caches also shares its update between the threads.)
pub fn update_beside(table: &Tensor<2>, rows: usize) -> bool {
    #[cfg(feature = "flex")]
    if on_flex(&table.device()) {
        return rows >= flex::MIN_SHARED_ROWS;
    }
    let _ = (table, rows);
    false
}

/// Work handed to the second thread (flex builds) for a result wanted later, such as a training
/// loop's next batch. There it fills time that thread would spend spinning between its row jobs;
/// a thread of its own would compete with that one and the step for the two cores, and wait its
/// turn on them. Builds without flex run the job on a thread of its own.
pub fn later<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Later<T> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(None));
    let put = out.clone();
    let job = move || *put.lock().unwrap_or_else(|e| e.into_inner()) = Some(job());
    #[cfg(feature = "flex")]
    let owed = crate::second_core::post_owed(job);
    #[cfg(not(feature = "flex"))]
    let owed = Some(std::thread::spawn(job));
    Later { out, owed }
}

/// A result of [`later`].
pub struct Later<T> {
    out: std::sync::Arc<std::sync::Mutex<Option<T>>>,
    #[cfg(feature = "flex")]
    owed: Option<crate::second_core::Owed>,
    #[cfg(not(feature = "flex"))]
    owed: Option<std::thread::JoinHandle<()>>,
}

impl<T> Later<T> {
    /// The job's result: it runs here if the second thread has not started it, else this waits
    /// for it. Panics if the job panicked.
    pub fn get(self) -> T {
        #[cfg(feature = "flex")]
        drop(self.owed);
        #[cfg(not(feature = "flex"))]
        let _ = self.owed.map(std::thread::JoinHandle::join);
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take().expect("the job handed to `later` panicked")
    }
}

/// Runs `there` on the second thread while `here` runs on this one, which then joins the rows
/// `there` shares (flex builds; elsewhere one after the other). Returns both results.
pub fn beside<A: Send, B>(there: impl FnOnce() -> A + Send, here: impl FnOnce() -> B) -> (A, B) {
    #[cfg(feature = "flex")]
    return crate::second_core::beside(there, here);
    #[cfg(not(feature = "flex"))]
    {
        let b = here();
        (there(), b)
    }
}

/// What a training loop that knows its next batch keeps from one step to the next (flex; empty
/// elsewhere): the rows a step fetched ahead for the next one ([`gather_ahead`], taken by
/// [`Pipeline::take`]), and the item table's Adam update that a step leaves running on the second
/// thread ([`Pipeline::defer_adam`]) while the next step computes. The caller keeps one per loop,
/// hands it to every step, and calls [`Pipeline::finish`] before it reads the model or the
/// optimizer; dropping the last handle finishes too.
#[derive(Clone, Default)]
pub struct Pipeline {
    #[cfg(feature = "flex")]
    slot: std::sync::Arc<std::sync::Mutex<Option<flex::Ahead>>>,
    #[cfg(feature = "flex")]
    owed: std::sync::Arc<std::sync::Mutex<Option<flex::Deferred>>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

impl Pipeline {
    /// This step's rows `rows` of `table` if they are what was fetched ahead into this slot, with
    /// those the previous step's update changed read again; first waits, as
    /// [`Pipeline::rows_ready`], until a deferred update has written them. `None` otherwise, and
    /// any deferred update is then finished, so that the caller may gather as usual.
    pub fn take(&self, table: &Tensor<2>, rows: &Tensor<1, Int>) -> Option<Tensor<2>> {
        #[cfg(feature = "flex")]
        {
            let want = flex::host_rows(rows, table.dims()[0]);
            self.ready_for(want.as_deref());
            let ahead = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            let got = ahead.zip(want).and_then(|(ahead, want)| flex::take_ahead(ahead, table, want));
            if got.is_none() {
                self.finish();
            }
            return got;
        }
        #[allow(unreachable_code)]
        {
            let _ = (table, rows);
            None
        }
    }

    /// Returns once the deferred update, if any, has written the rows `rows` (this step's) that
    /// it updates: at once where it updated them first (they were the rows it was told come
    /// next), else after it has finished.
    pub fn rows_ready(&self, rows: &Tensor<1, Int>) {
        #[cfg(feature = "flex")]
        self.ready_for(flex::host_rows(rows, usize::MAX).as_deref());
        let _ = rows;
    }

    /// [`Pipeline::rows_ready`] for the rows' values (`None`: unknown, so finish).
    #[cfg(feature = "flex")]
    fn ready_for(&self, rows: Option<&[usize]>) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = owed.as_mut()
            && !rows.is_some_and(|r| d.rows_ready(r))
        {
            owed.take().expect("checked above").finish();
        }
    }

    /// Finishes the deferred update, if any: the model's item table and the optimizer's state
    /// for it are complete after this. Raises a panic of the update here.
    pub fn finish(&self) {
        #[cfg(feature = "flex")]
        {
            let owed = self.owed.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(d) = owed {
                d.finish();
            }
        }
    }

    /// Starts [`adam_rows`] of `table` at `rows` on the second thread and returns without waiting:
    /// the rows among `next` (the next step's) first, the others while the next step computes.
    /// Finishes any earlier deferred update first. `Err(grad)` where this is not done: update as
    /// usual. It is done on flex for a table past the caches with enough rows, whose update waits
    /// on DRAM (NeuMF factor 8, 1M items, batch 4096: −0.24 ms of ~2.5 a step); a table in the
    /// caches updates quickly, and deferring it measured no faster (10k items).
    ///
    /// The table and the state stay shared with the model and the optimizer while it runs; until
    /// [`Pipeline::finish`], read only rows [`Pipeline::rows_ready`] has returned for.
    ///
    /// # Shapes
    /// - table, m, v: `[n, width]`; last: `[n]`; rows: `[r]` (unique); grad: `[r, width]`
    pub fn defer_adam(
        &self,
        table: &Tensor<2>,
        state: (&Tensor<2>, &Tensor<2>, &Tensor<1>),
        rows: &Tensor<1, Int>,
        grad: Tensor<2>,
        step: RowStep,
        next: &[i32],
    ) -> Result<(), Tensor<2>> {
        self.finish();
        #[cfg(feature = "flex")]
        if on_flex(&table.device()) && flex::split_worthwhile(table.dims()[0], table.dims()[1], rows.dims()[0]) {
            let d = flex::defer_adam(table, state, rows, grad, step, next)?;
            *self.owed.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
            return Ok(());
        }
        let _ = (table, state, rows, step, next);
        Err(grad)
    }
}

/// A [`gather_ahead`] under way; dropping it waits for the copy if it is running and cancels it
/// if it has not started. Drop it before `table` is written or dropped.
#[must_use = "the second thread may read the table until this is dropped"]
pub struct Pending {
    #[cfg(feature = "flex")]
    _ticket: Option<crate::second_core::Ticket>,
}

/// Starts copying, on the second thread and while this one runs the forward and backward passes,
/// the rows `next` of `table` that the next step will gather into `into`, noting which of them are
/// also among this step's `rows` (the update changes those; [`Pipeline::take`] reads them again);
/// then it reads this step's `rows` of the table and of its Adam `state` (m, v, last-step stamps)
/// into its caches, for the update it starts after the backward pass (or defers). Where [`update_beside`]
/// holds; elsewhere nothing is done.
///
/// # Shapes
/// - table, m, v: `[n, width]`; last: `[n]`; rows: `[r]`
pub fn gather_ahead(table: &Tensor<2>, rows: &Tensor<1, Int>, next: &[i32], into: &Pipeline, state: Option<(&Tensor<2>, &Tensor<2>, &Tensor<1>)>) -> Pending {
    #[cfg(feature = "flex")]
    if update_beside(table, rows.dims()[0]) {
        return Pending { _ticket: flex::gather_ahead(table, rows, next, into.slot.clone(), state) };
    }
    let _ = (table, rows, next, into, state);
    Pending {
        #[cfg(feature = "flex")]
        _ticket: None,
    }
}

/// Adam state of a table as tensors, for the fused update.
pub struct AdamRows {
    pub table: Tensor<2>,
    pub m: Tensor<2>,
    pub v: Tensor<2>,
    pub last: Tensor<1>,
}

/// Fused [`RowUpdate::adam_rows`] on a device where [`fused_on`] holds.
pub fn adam_rows(state: AdamRows, rows: Tensor<1, Int>, grad: Tensor<2>, step: RowStep) -> AdamRows {
    use burn::backend::Dispatch;
    let (table, m, v, last) = <Dispatch as RowUpdate>::adam_rows(
        state.table.into_dispatch(),
        state.m.into_dispatch(),
        state.v.into_dispatch(),
        state.last.into_dispatch(),
        rows.into_dispatch(),
        grad.into_dispatch(),
        step,
    );
    AdamRows { table: Tensor::from_dispatch(table), m: Tensor::from_dispatch(m), v: Tensor::from_dispatch(v), last: Tensor::from_dispatch(last) }
}

/// `table.select(0, rows)`, through [`RowUpdate::gather_rows`] where [`fused_on`] holds.
pub fn gather(table: Tensor<2>, rows: Tensor<1, Int>) -> Tensor<2> {
    use burn::backend::Dispatch;
    if !fused_on(&table.device()) {
        return table.select(0, rows);
    }
    Tensor::from_dispatch(<Dispatch as RowUpdate>::gather_rows(table.into_dispatch(), rows.into_dispatch()))
}

/// Fused [`RowUpdate::sgd_rows`] on a device where [`fused_on`] holds.
pub fn sgd_rows(table: Tensor<2>, rows: Tensor<1, Int>, grad: Tensor<2>, step: RowStep) -> Tensor<2> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as RowUpdate>::sgd_rows(table.into_dispatch(), rows.into_dispatch(), grad.into_dispatch(), step))
}

#[cfg(feature = "flex")]
pub(crate) mod flex {
    use super::{RowFactors, RowStep, RowUpdate};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{DType, Flex};

    /// Row indices of a 1-D int tensor (any view), checked against the table's row count.
    pub(crate) fn indices(rows: &FlexTensor, n: usize) -> Vec<usize> {
        let (a, b) = rows.layout().contiguous_offsets().expect("row indices are a contiguous view");
        let out: Vec<usize> = match rows.dtype() {
            DType::I32 => rows.storage::<i32>()[a..b].iter().map(|&r| r as usize).collect(),
            DType::I64 => rows.storage::<i64>()[a..b].iter().map(|&r| r as usize).collect(),
            other => panic!("row indices must be i32 or i64, got {other:?}"),
        };
        assert!(out.iter().all(|&r| r < n), "row index out of range for a table of {n} rows");
        out
    }

    /// A whole tensor, contiguous from offset 0, that this kernel may write in place (copied
    /// first only if its buffer is shared or it is a view).
    fn owned(t: FlexTensor) -> FlexTensor {
        if t.is_contiguous() && t.layout().start_offset() == 0 { t } else { t.to_contiguous() }
    }

    /// A float tensor's values as one contiguous slice (copied only if it is a strided view).
    pub(crate) fn contiguous(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
        match t.as_slice::<f32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()),
        }
    }

    /// The gradient rows as one contiguous slice.
    fn rows_of(grad: &FlexTensor) -> (std::borrow::Cow<'_, [f32]>, usize) {
        (contiguous(grad), grad.layout().shape()[1])
    }

    /// Hints the cache to fetch `bytes` bytes at `p` (x86-64; elsewhere nothing).
    #[inline(always)]
    fn prefetch(p: *const f32, bytes: usize) {
        #[cfg(target_arch = "x86_64")]
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetch never faults; the address is only a hint.
            unsafe { core::arch::x86_64::_mm_prefetch(p.cast::<i8>().wrapping_add(off), core::arch::x86_64::_MM_HINT_T2) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, bytes);
    }

    /// Backs a large table buffer with transparent huge pages (Linux), once per buffer: rows
    /// are read at random, and with 4 KiB pages nearly every row of a million-row table is a
    /// TLB miss (a two-level page walk under virtualisation). Best effort: errors are ignored.
    fn huge_pages(buf: &[f32]) {
        #[cfg(target_os = "linux")]
        {
            use std::sync::Mutex;
            static DONE: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
            const HUGE: usize = 2 << 20;
            let (start, len) = (buf.as_ptr() as usize, std::mem::size_of_val(buf));
            if len < 4 * HUGE {
                return;
            }
            let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
            if done.contains(&(start, len)) {
                return;
            }
            done.push((start, len));
            let (a, b) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
            unsafe extern "C" {
                fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            const MADV_COLLAPSE: i32 = 25;
            // SAFETY: the range lies inside a live allocation; these advices change only how it
            // is backed, never its contents.
            unsafe {
                madvise(a as *mut _, b - a, MADV_HUGEPAGE);
                madvise(a as *mut _, b - a, MADV_COLLAPSE);
            }
        }
    }

    /// Whether a table of `n × w` values gathered or updated at `rows` rows is split over two
    /// threads: only past the caches (about 8 MiB), and with enough rows to pay for the hand-over.
    pub(super) fn split_worthwhile(n: usize, w: usize, rows: usize) -> bool {
        n * w >= 2 << 20 && rows >= MIN_SHARED_ROWS
    }

    /// The fewest rows worth handing to the second thread.
    pub(super) const MIN_SHARED_ROWS: usize = 1024;

    /// Copies rows `idx` of a `w`-wide table into `out` (`idx.len() × w`), prefetching the rows
    /// ahead: a large table's rows are cache misses.
    fn copy_rows(tp: &[f32], w: usize, idx: &[usize], out: &mut [f32]) {
        for (i, (dst, &row)) in out.chunks_exact_mut(w.max(1)).zip(idx).enumerate() {
            if let Some(&ahead) = idx.get(i + AHEAD) {
                prefetch(tp.as_ptr().wrapping_add(ahead * w), w * 4);
            }
            dst.copy_from_slice(&tp[row * w..row * w + w]);
        }
    }

    /// Rows fetched ahead by [`super::gather_ahead`]: for which table (its buffer's address)
    /// and rows, the copied rows, and the positions to read again.
    pub(super) struct Ahead {
        table: usize,
        rows: Vec<usize>,
        out: Vec<f32>,
        stale: Vec<usize>,
    }

    /// A flex f32 tensor, contiguous, as flex's own tensor (a handle on the same buffer).
    fn flex_f32<const D: usize>(t: &burn::tensor::Tensor<D>) -> Option<FlexTensor> {
        use burn::backend::{BackendTensor, DispatchTensorKind};
        match t.clone().into_dispatch().kind {
            DispatchTensorKind::Flex(BackendTensor::Float(f)) if f.dtype() == DType::F32 && f.is_contiguous() => Some(f),
            _ => None,
        }
    }

    /// The address of a flex tensor's first element.
    fn address(f: &FlexTensor) -> usize {
        f.storage::<f32>().as_ptr() as usize + f.layout().start_offset() * 4
    }

    /// The values of a flex int tensor of row indices.
    pub(super) fn host_rows(rows: &burn::tensor::Tensor<1, burn::tensor::Int>, n: usize) -> Option<Vec<usize>> {
        use burn::backend::{BackendTensor, DispatchTensorKind};
        match rows.clone().into_dispatch().kind {
            DispatchTensorKind::Flex(BackendTensor::Int(r)) => Some(indices(&r, n)),
            _ => None,
        }
    }

    /// See [`super::gather_ahead`].
    pub(super) fn gather_ahead(
        table: &burn::tensor::Tensor<2>,
        rows: &burn::tensor::Tensor<1, burn::tensor::Int>,
        next: &[i32],
        done: std::sync::Arc<std::sync::Mutex<Option<Ahead>>>,
        state: Option<(&burn::tensor::Tensor<2>, &burn::tensor::Tensor<2>, &burn::tensor::Tensor<1>)>,
    ) -> Option<crate::second_core::Ticket> {
        let [n, w] = table.dims();
        let base = address(&flex_f32(table)?);
        let now = host_rows(rows, n)?;
        if next.iter().any(|&r| r < 0 || r as usize >= n) {
            return None;
        }
        // The table's Adam state, when it has the table's shape.
        let moments = state
            .filter(|(m, v, last)| m.dims() == [n, w] && v.dims() == [n, w] && last.dims() == [n])
            .and_then(|(m, v, last)| Some((address(&flex_f32(m)?), address(&flex_f32(v)?), address(&flex_f32(last)?))));
        let next: Vec<usize> = next.iter().map(|&r| r as usize).collect();
        crate::second_core::post(move || {
            // SAFETY: these buffers hold n × w (table, moments) and n (stamps) f32 at these
            // addresses; the step drops this job's ticket before it writes or drops any of them,
            // so they are alive and unchanged while this runs.
            let rows_of = |at: usize, len: usize| unsafe { std::slice::from_raw_parts(at as *const f32, len) };
            let tp = rows_of(base, n * w);
            let mut out = vec![0f32; next.len() * w];
            copy_rows(tp, w, &next, &mut out);
            let this_step = RowSet::new(&now);
            let stale = next.iter().enumerate().filter(|(_, r)| this_step.contains(**r)).map(|(i, _)| i).collect();
            *done.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ahead { table: base, rows: next, out, stale });
            // This step's rows of the table and its Adam state, into this core's caches for the
            // update this thread starts after the backward pass (`beside`), in row order as its
            // blocks are claimed. Loads, not prefetch hints, which are dropped once too many
            // misses are in flight.
            if let Some((m, v, last)) = moments {
                let (mp, vp, lp) = (rows_of(m, n * w), rows_of(v, n * w), rows_of(last, n));
                let mut sorted = now;
                sorted.sort_unstable();
                let mut sum = 0f32;
                for &row in &sorted {
                    for buf in [tp, mp, vp] {
                        let r = &buf[row * w..row * w + w];
                        sum += r.iter().step_by(16).sum::<f32>() + r[w - 1];
                    }
                    sum += lp[row];
                }
                std::hint::black_box(sum);
            }
        })
    }

    /// See [`super::Pipeline::take`]; `rows` are the step's rows' values.
    pub(super) fn take_ahead(ahead: Ahead, table: &burn::tensor::Tensor<2>, rows: Vec<usize>) -> Option<burn::tensor::Tensor<2>> {
        let [_, w] = table.dims();
        let t = flex_f32(table)?;
        if address(&t) != ahead.table || rows != ahead.rows {
            return None;
        }
        let mut out = ahead.out;
        let tp = ahead.table as *const f32;
        for &i in &ahead.stale {
            // SAFETY: row `rows[i] < n` of the n × w table at this address, which `t` keeps
            // alive; read through the pointer, as a deferred update may be writing other rows
            // (`Pipeline::take` has waited for these).
            unsafe { std::ptr::copy_nonoverlapping(tp.add(ahead.rows[i] * w), out[i * w..].as_mut_ptr(), w) };
        }
        drop(t);
        Some(burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(out, [ahead.rows.len(), w]), &table.device()))
    }

    /// Pieces a split gather or update is cut into, claimed one at a time by either thread.
    const BLOCKS: usize = 16;

    /// Slots of the per-step cache of row factors, keyed by the row's last step.
    const MEMO: usize = 512;

    /// How many rows ahead to prefetch: enough to cover a cache miss on a large table.
    const AHEAD: usize = 16;

    /// One step's row-sparse Adam over table rows.
    struct AdamKernel<'a> {
        step: RowStep,
        grad: &'a [f32],
        width: usize,
        step_size: f32,
        inv_sqrt_c2: f32,
    }

    impl<'a> AdamKernel<'a> {
        fn new(step: &RowStep, grad: &'a [f32], width: usize) -> Self {
            let (step_size, inv_sqrt_c2) = step.corrections();
            Self { step: *step, grad, width, step_size: step_size as f32, inv_sqrt_c2: inv_sqrt_c2 as f32 }
        }

        /// Updates rows `work[j].1` of `at` with gradient row `work[j].0`.
        ///
        /// # Safety
        /// Every row in `work` lies inside `at`'s buffers, and no other thread reads or writes
        /// those rows while this runs.
        unsafe fn run(&self, at: RowPtrs, work: &[(usize, usize)]) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above); the rest is the caller's.
                return unsafe { self.run_avx2(at, work) };
            }
            // SAFETY: the caller's.
            unsafe { self.run_any(at, work) }
        }

        /// [`AdamKernel::run_any`] compiled for AVX2: the row loops' square roots and divisions
        /// go 8 lanes wide instead of SSE2's 4 (the same IEEE operations, so the same results).
        ///
        /// # Safety
        /// The CPU supports AVX2, and [`AdamKernel::run`]'s conditions hold.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn run_avx2(&self, at: RowPtrs, work: &[(usize, usize)]) {
            // SAFETY: the caller's.
            unsafe { self.run_any(at, work) }
        }

        /// [`AdamKernel::run`] for any CPU.
        ///
        /// # Safety
        /// [`AdamKernel::run`]'s conditions: every row in `work` lies inside `at`'s buffers, and no
        /// other thread reads or writes those rows while this runs.
        #[inline(always)]
        unsafe fn run_any(&self, at: RowPtrs, work: &[(usize, usize)]) {
            let (s, w) = (&self.step, self.width);
            let (eps, l2) = (s.eps as f32, s.l2 as f32);
            let (one_b1, one_b2) = ((1.0 - s.beta1) as f32, (1.0 - s.beta2) as f32);
            let (step_size, inv_sqrt_c2) = (self.step_size, self.inv_sqrt_c2);
            let factors = super::CatchUp::new(s);
            let mut memo = [(-1.0, RowFactors { catch_up: 0.0, decay1: 0.0, decay2: 0.0 }); MEMO];
            for (j, &(i, row)) in work.iter().enumerate() {
                if let Some(&(_, ahead)) = work.get(j + AHEAD) {
                    for base in [at.t, at.m, at.v] {
                        prefetch(base.wrapping_add(ahead * w), w * 4);
                    }
                    prefetch(at.last.wrapping_add(ahead), 4);
                }
                // SAFETY: row `row` of each buffer, which only this call touches (the caller's).
                let (tr, mr, vr, lr) = unsafe {
                    let row_of = |base: *mut f32| std::slice::from_raw_parts_mut(base.add(row * w), w);
                    (row_of(at.t), row_of(at.m), row_of(at.v), &mut *at.last.add(row))
                };
                // The factors depend only on the row's last step (within a step): memoised.
                let last = *lr as f64;
                let slot = &mut memo[(last as usize) % MEMO];
                if slot.0 != last {
                    *slot = (last, factors.factors(last));
                }
                let f = slot.1;
                let c = RowConsts { catch_up: f.catch_up as f32, d1: f.decay1 as f32, d2: f.decay2 as f32, l2, eps, one_b1, one_b2, step_size, inv_sqrt_c2 };
                adam_row(tr, mr, vr, &self.grad[i * w..i * w + w], &c);
                *lr = s.t as f32;
            }
        }
    }

    /// The scalars of one row's Adam update.
    struct RowConsts {
        catch_up: f32,
        d1: f32,
        d2: f32,
        l2: f32,
        eps: f32,
        one_b1: f32,
        one_b2: f32,
        step_size: f32,
        inv_sqrt_c2: f32,
    }

    /// One row's Adam update. A function of its own so the compiler knows the four rows do not
    /// overlap (they come from raw pointers) and vectorises the loops.
    #[inline(always)]
    fn adam_row(t: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &RowConsts) {
        let cols = t.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
        if c.catch_up == 0.0 {
            // Updated on the previous step (or never): no catch-up term, one square root and one
            // division per value instead of two.
            for (((t, m), v), &g) in cols {
                let g = g + c.l2 * *t;
                *m = *m * c.d1 + c.one_b1 * g;
                *v = *v * c.d2 + c.one_b2 * g * g;
                *t -= *m * c.step_size / (v.sqrt() * c.inv_sqrt_c2 + c.eps);
            }
        } else {
            for (((t, m), v), &g) in cols {
                let g = g + c.l2 * *t;
                let catch = *m * c.catch_up / (v.sqrt() + c.eps);
                *m = *m * c.d1 + c.one_b1 * g;
                *v = *v * c.d2 + c.one_b2 * g * g;
                *t -= *m * c.step_size / (v.sqrt() * c.inv_sqrt_c2 + c.eps) + catch;
            }
        }
    }

    /// A table and its Adam state as raw buffers whose rows are reached one at a time, so that
    /// the second thread can update some rows while this one reads others (see
    /// [`defer_adam`]). Rows are `width` values; `last` has one value per row.
    #[derive(Clone, Copy)]
    struct RowPtrs {
        t: *mut f32,
        m: *mut f32,
        v: *mut f32,
        last: *mut f32,
    }

    // SAFETY: plain addresses; who may touch which row is the contract of `AdamKernel::run`.
    unsafe impl Send for RowPtrs {}
    unsafe impl Sync for RowPtrs {}

    impl RowPtrs {
        /// The same buffers from row `row` on.
        fn at_row(self, row: usize, width: usize) -> Self {
            let at = |p: *mut f32, k: usize| p.wrapping_add(k);
            Self { t: at(self.t, row * width), m: at(self.m, row * width), v: at(self.v, row * width), last: at(self.last, row) }
        }
    }

    /// A set of row indices for membership tests, by open addressing (a batch's few thousand
    /// rows: faster than SipHash's `HashSet`).
    struct RowSet {
        slots: Vec<usize>,
        mask: usize,
    }

    impl RowSet {
        const EMPTY: usize = usize::MAX;

        fn new(rows: &[usize]) -> Self {
            let mask = (rows.len() * 2).next_power_of_two().max(16) - 1;
            let mut set = Self { slots: vec![Self::EMPTY; mask + 1], mask };
            for &r in rows {
                let mut k = set.home(r);
                while set.slots[k] != Self::EMPTY && set.slots[k] != r {
                    k = (k + 1) & set.mask;
                }
                set.slots[k] = r;
            }
            set
        }

        fn home(&self, row: usize) -> usize {
            (row.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & self.mask
        }

        fn contains(&self, row: usize) -> bool {
            let mut k = self.home(row);
            loop {
                match self.slots[k] {
                    Self::EMPTY => return false,
                    r if r == row => return true,
                    _ => k = (k + 1) & self.mask,
                }
            }
        }
    }

    /// An Adam update of a table's rows left running on the second thread ([`defer_adam`]).
    pub(super) struct Deferred {
        /// `None` once run or taken back.
        owed: Option<crate::second_core::Owed>,
        flags: std::sync::Arc<DeferredFlags>,
        /// The rows it was told come next, which it updates first.
        next: Vec<usize>,
    }

    #[derive(Default)]
    struct DeferredFlags {
        /// The rows among `next` are written (or the job stopped).
        ready: std::sync::atomic::AtomicBool,
        /// The job ran to its end.
        complete: std::sync::atomic::AtomicBool,
    }

    impl Deferred {
        /// Waits until this step's rows `rows` are written, if they are the rows it updates first;
        /// `false` (nothing waited for) if they are not.
        pub(super) fn rows_ready(&mut self, rows: &[usize]) -> bool {
            use std::sync::atomic::Ordering;
            if rows != self.next {
                return false;
            }
            while !self.flags.ready.load(Ordering::Acquire) {
                match &self.owed {
                    // Not started (the thread is busy or descheduled): run it here.
                    Some(o) if o.is_queued() => drop(self.owed.take()),
                    Some(_) => std::hint::spin_loop(),
                    None => break,
                }
            }
            true
        }

        /// Waits for (or runs) the rest of the update; raises its panic here.
        pub(super) fn finish(mut self) {
            drop(self.owed.take());
            assert!(self.flags.complete.load(std::sync::atomic::Ordering::Acquire), "the deferred row update on the second thread panicked");
        }
    }

    /// See [`super::Pipeline::defer_adam`].
    pub(super) fn defer_adam(
        table: &burn::tensor::Tensor<2>,
        (m, v, last): (&burn::tensor::Tensor<2>, &burn::tensor::Tensor<2>, &burn::tensor::Tensor<1>),
        rows: &burn::tensor::Tensor<1, burn::tensor::Int>,
        grad: burn::tensor::Tensor<2>,
        step: RowStep,
        next: &[i32],
    ) -> Result<Deferred, burn::tensor::Tensor<2>> {
        let [n, w] = table.dims();
        let fits = m.dims() == [n, w] && v.dims() == [n, w] && last.dims() == [n] && grad.dims()[1] == w;
        let (Some(t), Some(m), Some(v), Some(last), Some(g), Some(idx), true) =
            (flex_f32(table), flex_f32(m), flex_f32(v), flex_f32(last), flex_f32(&grad), host_rows(rows, n), fits)
        else {
            return Err(grad);
        };
        let next: Vec<usize> = next.iter().filter_map(|&r| usize::try_from(r).ok()).collect();
        let at = RowPtrs { t: address(&t) as *mut f32, m: address(&m) as *mut f32, v: address(&v) as *mut f32, last: address(&last) as *mut f32 };
        for buf in [&t, &m, &v] {
            huge_pages(buf.storage::<f32>());
        }
        let flags = std::sync::Arc::new(DeferredFlags::default());
        let (job_flags, job_next) = (flags.clone(), next.clone());
        let job = move || {
            use std::sync::atomic::Ordering;
            /// Marks the first rows written even if the update panics, so no one waits forever.
            struct Ready<'a>(&'a DeferredFlags);
            impl Drop for Ready<'_> {
                fn drop(&mut self) {
                    self.0.ready.store(true, Ordering::Release);
                }
            }
            // The handles keep the buffers alive; they are written through `at`, row by row.
            let _alive = (&t, &m, &v, &last);
            let ready = Ready(&job_flags);
            let (g, w) = rows_of(&g);
            let kernel = AdamKernel::new(&step, &g, w);
            let wanted = RowSet::new(&job_next);
            let (first, rest): (Vec<_>, Vec<_>) = idx.iter().copied().enumerate().partition(|&(_, r)| wanted.contains(r));
            // SAFETY: the rows are inside the buffers (`host_rows` checked them against n), and
            // until `ready` nothing reads them: the next step waits for it (`rows_ready`), and
            // every other reader first waits for the whole job (`Pipeline::finish`).
            unsafe { kernel.run(at, &first) };
            drop(ready);
            // SAFETY: the same; the rows not among `next` are read by no one until `finish`.
            unsafe { kernel.run(at, &rest) };
            job_flags.complete.store(true, Ordering::Release);
        };
        let owed = crate::second_core::post_owed(job);
        Ok(Deferred { owed, flags, next })
    }

    impl RowUpdate for Flex {
        fn adam_rows(
            table: FlexTensor,
            m: FlexTensor,
            v: FlexTensor,
            last: FlexTensor,
            rows: FlexTensor,
            grad: FlexTensor,
            s: RowStep,
        ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
            let (mut table, mut m, mut v, mut last) = (owned(table), owned(m), owned(v), owned(last));
            let n = table.layout().shape()[0];
            let idx = indices(&rows, n);
            let (g, w) = rows_of(&grad);
            for buf in [&table, &m, &v] {
                huge_pages(buf.storage::<f32>());
            }
            let at = RowPtrs {
                t: table.storage_mut::<f32>().as_mut_ptr(),
                m: m.storage_mut::<f32>().as_mut_ptr(),
                v: v.storage_mut::<f32>().as_mut_ptr(),
                last: last.storage_mut::<f32>().as_mut_ptr(),
            };
            let kernel = AdamKernel::new(&s, &g, w);
            if split_worthwhile(n, w, idx.len()) {
                // A table this large is updated at DRAM latency: two threads keep twice the misses
                // in flight. The table is cut into row-range blocks that either thread claims
                // whole, so a repeated row can never be updated by both at once, and a late
                // second thread leaves its share to this one. (Over flex's rayon pool the
                // wake-ups cost more than it saved.)
                let span = n.div_ceil(BLOCKS);
                let mut work: Vec<Vec<(usize, usize)>> = vec![Vec::with_capacity(idx.len() / BLOCKS + 16); n.div_ceil(span)];
                for (i, &row) in idx.iter().enumerate() {
                    work[row / span].push((i, row % span));
                }
                // SAFETY: block b's rows lie in rows b·span.. of the buffers (uniquely owned
                // here), and `for_each` runs each block once, on one thread.
                crate::second_core::for_each(work.len(), |b| unsafe { kernel.run(at.at_row(b * span, w), &work[b]) });
            } else {
                let work: Vec<(usize, usize)> = idx.into_iter().enumerate().collect();
                // SAFETY: the rows are in the buffers, uniquely owned here.
                unsafe { kernel.run(at, &work) };
            }
            (table, m, v, last)
        }

        fn gather_rows(table: FlexTensor, rows: FlexTensor) -> FlexTensor {
            let table = owned(table);
            let [n, w] = [table.layout().shape()[0], table.layout().shape()[1]];
            let idx = indices(&rows, n);
            let tp = table.storage::<f32>();
            let mut out = vec![0f32; idx.len() * w];
            let copy = |out: &mut [f32], idx: &[usize]| copy_rows(tp, w, idx, out);
            if split_worthwhile(n, w, idx.len()) {
                // Rows of a large table are DRAM misses: chunks of them on both threads.
                let chunk = idx.len().div_ceil(BLOCKS);
                let parts: Vec<_> = out.chunks_mut(chunk * w).map(|o| std::sync::Mutex::new(Some(o))).collect();
                crate::second_core::for_each(parts.len(), |p| {
                    let o = parts[p].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each chunk is claimed once");
                    copy(o, &idx[p * chunk..p * chunk + o.len() / w]);
                });
            } else {
                copy(&mut out, &idx);
            }
            FlexTensor::from_data(burn::tensor::TensorData::new(out, [idx.len(), w]))
        }

        fn sgd_rows(table: FlexTensor, rows: FlexTensor, grad: FlexTensor, s: RowStep) -> FlexTensor {
            let mut table = owned(table);
            let n = table.layout().shape()[0];
            let idx = indices(&rows, n);
            let (g, w) = rows_of(&grad);
            let (lr, l2) = (s.lr as f32, s.l2 as f32);
            let tp = table.storage_mut::<f32>();
            for (i, &row) in idx.iter().enumerate() {
                if let Some(&ahead) = idx.get(i + AHEAD) {
                    prefetch(tp.as_ptr().wrapping_add(ahead * w), w * 4);
                }
                let tr = &mut tp[row * w..row * w + w];
                for (t, &gc) in tr.iter_mut().zip(&g[i * w..i * w + w]) {
                    *t -= lr * (gc + l2 * *t);
                }
            }
            table
        }
    }
}

/// The CubeCL kernels (wgpu, CUDA): one unit per batch row, walking the row's columns, so a
/// row's last-step stamp is read and written by the unit that owns the row.
#[cfg(feature = "cube")]
mod cube {
    use super::{RowStep, RowUpdate};
    use burn::backend::ops::{FloatTensorOps, IntTensorOps};
    use burn::backend::{DType, IntDType};
    use burn_cubecl::CubeBackend;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;
    use cubecl::{CubeDim, calculate_cube_count_elemwise};

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn adam_rows_kernel(
        table: &mut Tensor<f32>,
        m: &mut Tensor<f32>,
        v: &mut Tensor<f32>,
        last: &mut Tensor<f32>,
        rows: &Tensor<i32>,
        grad: &Tensor<f32>,
        t: f32,
        lr: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        l2: f32,
        // This step's bias-corrected step size and 1/sqrt(1 - β2ᵗ).
        step_size: f32,
        inv_sqrt_c2: f32,
        // ln β1, ln β2, r = β1/sqrt(β2) and ln r, for the catch-up factors.
        ln_b1: f32,
        ln_b2: f32,
        r: f32,
        ln_r: f32,
        // 1 - β1, 1 - β2 and 1 - r, taken in f64 as the composed ops take them: 1 - β2 from β2 =
        // 0.999 rounded to f32 is 1.3e-5 of itself short, a bias in every v that training amplified
        // into weights 0.04 away from the composed path's after one epoch.
        one_b1: f32,
        one_b2: f32,
        one_r: f32,
        width: u32,
    ) {
        if ABSOLUTE_POS >= rows.len() {
            terminate!();
        }
        let row = usize::cast_from(rows[ABSOLUTE_POS]);
        let w = width as usize;
        let prev = last[row];
        let k = t - 1.0 - prev;
        let mut catch_up = 0.0;
        let mut d1 = b1;
        let mut d2 = b2;
        if k > 0.0 {
            // See RowStep::row_factors; the same formula in f32.
            let rk = f32::exp(k * ln_r);
            let geo = (1.0 - rk) * r / one_r;
            let j_bar = ((1.0 - rk) - k * rk * one_r) / f32::max((1.0 - rk) * one_r, 1e-12);
            let t_mid = prev + j_bar;
            let c1 = f32::max(1.0 - f32::exp(t_mid * ln_b1), 1e-12);
            let c2 = f32::max(1.0 - f32::exp(t_mid * ln_b2), 1e-12);
            catch_up = geo * f32::sqrt(c2) / c1 * lr;
            d1 = f32::exp(k * ln_b1) * b1;
            d2 = f32::exp(k * ln_b2) * b2;
        }
        let base = row * w;
        let gbase = ABSOLUTE_POS * w;
        for c in 0..w {
            let x = table[base + c];
            let g = grad[gbase + c] + l2 * x;
            let m0 = m[base + c];
            let v0 = v[base + c];
            let catch = m0 * catch_up / (f32::sqrt(v0) + eps);
            let m1 = m0 * d1 + one_b1 * g;
            let v1 = v0 * d2 + one_b2 * g * g;
            table[base + c] = x - (m1 * step_size / (f32::sqrt(v1) * inv_sqrt_c2 + eps) + catch);
            m[base + c] = m1;
            v[base + c] = v1;
        }
        last[row] = t;
    }

    #[cube(launch)]
    fn sgd_rows_kernel(table: &mut Tensor<f32>, rows: &Tensor<i32>, grad: &Tensor<f32>, lr: f32, l2: f32, width: u32) {
        if ABSOLUTE_POS >= rows.len() {
            terminate!();
        }
        let w = width as usize;
        let base = usize::cast_from(rows[ABSOLUTE_POS]) * w;
        let gbase = ABSOLUTE_POS * w;
        for c in 0..w {
            let x = table[base + c];
            table[base + c] = x - lr * (grad[gbase + c] + l2 * x);
        }
    }

    /// A contiguous f32 tensor this kernel may write in place (copied if shared).
    fn writable(t: CubeTensor) -> CubeTensor {
        assert_eq!(t.dtype, DType::F32, "row updates run on f32 tables");
        let t = if t.is_contiguous() { t } else { burn_cubecl::kernel::into_contiguous(t) };
        if t.can_mut() { t } else { t.copy() }
    }

    fn readable(t: CubeTensor) -> CubeTensor {
        if t.is_contiguous() { t } else { burn_cubecl::kernel::into_contiguous(t) }
    }

    fn int32(rows: CubeTensor) -> CubeTensor {
        let rows = if rows.dtype == DType::I32 { rows } else { CubeBackend::int_cast(rows, IntDType::I32) };
        readable(rows)
    }

    /// One unit per batch row.
    fn grid(client: &cubecl::client::Client, rows: usize) -> (CubeCount, CubeDim) {
        let cube_dim = CubeDim::new(client, rows);
        (calculate_cube_count_elemwise(client, rows, cube_dim), cube_dim)
    }

    impl RowUpdate for CubeBackend {
        fn adam_rows(
            table: CubeTensor,
            m: CubeTensor,
            v: CubeTensor,
            last: CubeTensor,
            rows: CubeTensor,
            grad: CubeTensor,
            s: RowStep,
        ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
            let (table, m, v, last) = (writable(table), writable(m), writable(v), writable(last));
            let (rows, grad) = (int32(rows), readable(grad));
            let width = table.meta.shape()[1];
            let r = rows.meta.shape()[0];
            let (step_size, inv_sqrt_c2) = s.corrections();
            let ratio = s.beta1 / s.beta2.sqrt();
            let client = table.client.clone();
            let (count, cube_dim) = grid(&client, r);
            adam_rows_kernel::launch(
                &client,
                count,
                cube_dim,
                table.clone().into_tensor_arg(),
                m.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                last.clone().into_tensor_arg(),
                rows.into_tensor_arg(),
                grad.into_tensor_arg(),
                s.t as f32,
                s.lr as f32,
                s.beta1 as f32,
                s.beta2 as f32,
                s.eps as f32,
                s.l2 as f32,
                step_size as f32,
                inv_sqrt_c2 as f32,
                s.beta1.ln() as f32,
                s.beta2.ln() as f32,
                ratio as f32,
                ratio.ln() as f32,
                (1.0 - s.beta1) as f32,
                (1.0 - s.beta2) as f32,
                (1.0 - ratio) as f32,
                width as u32,
            );
            (table, m, v, last)
        }

        fn gather_rows(table: CubeTensor, rows: CubeTensor) -> CubeTensor {
            CubeBackend::float_select(table, 0, rows)
        }

        fn sgd_rows(table: CubeTensor, rows: CubeTensor, grad: CubeTensor, s: RowStep) -> CubeTensor {
            let table = writable(table);
            let (rows, grad) = (int32(rows), readable(grad));
            let width = table.meta.shape()[1];
            let r = rows.meta.shape()[0];
            let client = table.client.clone();
            let (count, cube_dim) = grid(&client, r);
            sgd_rows_kernel::launch(
                &client,
                count,
                cube_dim,
                table.clone().into_tensor_arg(),
                rows.into_tensor_arg(),
                grad.into_tensor_arg(),
                s.lr as f32,
                s.l2 as f32,
                width as u32,
            );
            table
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form with every power taken by `exp`, as written in the module docs of
    /// [`crate::optim`].
    fn reference(s: &RowStep, last: f64) -> RowFactors {
        let (b1, b2) = (s.beta1, s.beta2);
        let k = s.t - 1.0 - last;
        let r = b1 / b2.sqrt();
        let rk = (k * r.ln()).exp();
        let j_bar = ((1.0 - rk) - k * rk * (1.0 - r)) / ((1.0 - rk) * (1.0 - r)).max(1e-12);
        let t_mid = last + j_bar;
        let c1 = (1.0 - (t_mid * b1.ln()).exp()).max(1e-12);
        let c2 = (1.0 - (t_mid * b2.ln()).exp()).max(1e-12);
        let geo = (1.0 - rk) * r / (1.0 - r);
        RowFactors { catch_up: geo * c2.sqrt() / c1 * s.lr, decay1: (k * b1.ln()).exp() * b1, decay2: (k * b2.ln()).exp() * b2 }
    }

    #[cfg(feature = "flex")]
    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[cfg(feature = "flex")]
    fn ints(v: &[i32], d: &Device) -> Tensor<1, Int> {
        Tensor::from_data(burn::tensor::TensorData::new(v.to_vec(), [v.len()]), d)
    }

    /// A table of 60,000 rows of 40 values (past the caches), and this step's and the next
    /// step's 3000 rows: distinct within each, 1 in 11 shared. `(n, w, now, next)`.
    #[cfg(feature = "flex")]
    fn two_steps() -> (usize, usize, Vec<i32>, Vec<i32>) {
        let r = 3000;
        let now: Vec<i32> = (0..r).map(|k| k * 17).collect();
        let next: Vec<i32> = (0..r).map(|k| if k % 11 == 0 { k * 17 } else { k * 17 + 5 }).collect();
        (60_000, 40, now, next)
    }

    #[cfg(feature = "flex")]
    #[test]
    fn rows_fetched_ahead_are_taken_with_the_updated_rows_read_again() {
        use burn::tensor::Distribution;
        let d = Device::flex();
        let (n, w, now, next) = two_steps();
        let r = now.len();
        let ints = |v: &[i32]| ints(v, &d);
        let mut table = Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.1), &d);
        assert!(update_beside(&table, r), "a table past the caches");
        // The copy runs on the second thread; retried in case it had not started before the drop.
        for attempt in 0.. {
            let slot = Pipeline::default();
            expect_update(&table, r);
            let pending = gather_ahead(&table, &ints(&now), &next, &slot, None);
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(pending);
            // This step's update, in place, changes its rows after the copy.
            let grad = Tensor::<2>::ones([r, w], &d);
            let step = RowStep { t: 1.0, lr: 0.5, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 0.0 };
            table = sgd_rows(table, ints(&now), grad, step);
            if let Some(got) = slot.take(&table, &ints(&next)) {
                assert_eq!(values(got), values(table.clone().select(0, ints(&next))));
                // Taken once.
                assert!(slot.take(&table, &ints(&next)).is_none());
                break;
            }
            assert!(attempt < 20, "the rows fetched ahead were never taken");
        }
        let other = Pipeline::default();
        drop(gather_ahead(&table, &ints(&now), &next, &other, None));
        assert!(other.take(&table, &ints(&now)).is_none(), "rows other than those fetched");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn a_deferred_update_writes_the_next_rows_first_and_ends_as_the_update_in_place() {
        use burn::tensor::{Distribution, TensorData};
        let d = Device::flex();
        let (n, w, now, next) = two_steps();
        let r = now.len();
        let ints = |v: &[i32]| ints(v, &d);
        let copy = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &d);
        let table = Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.1), &d);
        let grad = Tensor::<2>::random([r, w], Distribution::Normal(0.0, 0.1), &d);
        // Rows last updated at different steps, so the catch-up runs too.
        let last = Tensor::<1>::from_data(TensorData::new((0..n).map(|k| (k % 5) as f32).collect::<Vec<f32>>(), [n]), &d);
        let (m, v) = (Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.01), &d), Tensor::<2>::random([n, w], Distribution::Uniform(0.0, 1e-4), &d));
        let step = RowStep { t: 6.0, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 1e-4 };
        assert!(update_beside(&table, r), "the second thread's path");
        let want = adam_rows(AdamRows { table: copy(&table), m: copy(&m), v: copy(&v), last: last.clone() + 0.0 }, ints(&now), grad.clone(), step);
        for _ in 0..5 {
            let (t, m, v, l) = (copy(&table), copy(&m), copy(&v), last.clone() + 0.0);
            let pipeline = Pipeline::default();
            expect_update(&t, r);
            assert!(pipeline.defer_adam(&t, (&m, &v, &l), &ints(&now), grad.clone(), step, &next).is_ok(), "deferred on flex");
            // The next step's rows are final once `rows_ready` returns, the rest may not be yet.
            pipeline.rows_ready(&ints(&next));
            assert_eq!(values(t.clone().select(0, ints(&next))), values(want.table.clone().select(0, ints(&next))));
            pipeline.finish();
            assert_eq!(values(t), values(want.table.clone()));
            assert_eq!(values(m), values(want.m.clone()));
            assert_eq!(values(v), values(want.v.clone()));
            assert_eq!(l.into_data().try_into_vec_as::<f32>().unwrap(), want.last.clone().into_data().try_into_vec_as::<f32>().unwrap());
        }
        // Rows other than those announced wait for the whole update.
        let (t, m2, v2, l) = (copy(&table), copy(&m), copy(&v), last.clone() + 0.0);
        let pipeline = Pipeline::default();
        assert!(pipeline.defer_adam(&t, (&m2, &v2, &l), &ints(&now), grad, step, &next).is_ok());
        pipeline.rows_ready(&ints(&now));
        assert_eq!(values(t), values(want.table));
    }

    #[test]
    fn later_hands_back_each_jobs_result_and_a_moved_value() {
        // A value moved from job to job, as the training loop moves its batch builder.
        let mut acc = Some(Vec::new());
        for k in 0..200usize {
            let mut v = acc.take().unwrap();
            let job = later(move || {
                v.push(k);
                (v, k * 3)
            });
            let (v, out) = job.get();
            assert_eq!(out, k * 3);
            acc = Some(v);
        }
        assert_eq!(acc.unwrap(), (0..200).collect::<Vec<_>>());
        let queued: Vec<_> = (0..50).map(|k| later(move || k + 1)).collect();
        assert_eq!(queued.into_iter().map(Later::get).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn catch_up_factors_equal_the_closed_form_exactly() {
        for (beta1, beta2) in [(0.9, 0.999), (0.5, 0.99), (0.99, 0.9999)] {
            for t in [2.0, 3.0, 50.0, 400.0, 5_000.0, 200_000.0, 3e6] {
                let s = RowStep { t, lr: 0.001, beta1, beta2, eps: 1e-8, l2: 0.0 };
                let c = CatchUp::new(&s);
                for last in [0.0, 1.0, 7.0, t / 2.0, t - 3.0, t - 2.0].into_iter().filter(|&l| l >= 0.0 && l < t - 1.0) {
                    let (got, want) = (c.factors(last), reference(&s, last));
                    assert_eq!(got, want, "β {beta1}/{beta2} t {t} last {last}");
                    assert_eq!(got, s.row_factors(last));
                }
                // A row never updated, after as many steps as β2ᵏ takes to underflow: finite.
                let f = c.factors(0.0);
                assert!(f.catch_up.is_finite() && f.decay1.is_finite() && f.decay2.is_finite(), "{f:?}");
                // Updated on the previous step: no catch-up, one step's decay.
                assert_eq!(c.factors(t - 1.0), RowFactors { catch_up: 0.0, decay1: beta1, decay2: beta2 });
            }
        }
    }
}
