//! The flex kernels: native Rust over the tables' host buffers, prefetching rows ahead (a large
//! table's rows are cache misses) and, past the caches, sharing the rows with the helper threads
//! ([`crate::second_core`]). Also the flex tensor plumbing the pipeline (`pipeline.rs`) reads
//! rows through.

use super::{RowFactors, RowStep, RowUpdate};
use burn::backend::flex::FlexTensor;
use burn::backend::{BackendTensor, DType, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex};
use burn::tensor::{Int, Tensor};

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
pub(super) fn owned(t: FlexTensor) -> FlexTensor {
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
pub(super) fn rows_of(grad: &FlexTensor) -> (std::borrow::Cow<'_, [f32]>, usize) {
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

/// The fewest rows worth handing to a helper thread.
pub(super) const MIN_SHARED_ROWS: usize = 1024;

/// Copies, for each `(i, row)` of `work`, row `row` of the `w`-wide table at `tp` into
/// `out[i·w..(i+1)·w]`, prefetching the rows ahead: a large table's rows are cache misses. Reads
/// the table row by row through `tp`, so that other rows of it may be written meanwhile.
///
/// # Safety
/// Every `row` lies inside the buffer at `tp`, and no thread writes those rows while this runs.
pub(super) unsafe fn copy_rows(tp: *const f32, w: usize, work: impl Iterator<Item = (usize, usize)> + Clone, out: &mut [f32]) {
    let mut ahead = work.clone().skip(AHEAD);
    for (i, row) in work {
        if let Some((_, next)) = ahead.next() {
            prefetch(tp.wrapping_add(next * w), w * 4);
        }
        let dst = &mut out[i * w..i * w + w];
        // SAFETY: the row is inside the buffer and not written meanwhile (the caller's); `dst`
        // is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(tp.add(row * w), dst.as_mut_ptr(), w) };
    }
}

/// A flex f32 tensor, contiguous, as flex's own tensor (a handle on the same buffer).
pub(super) fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    match t.clone().into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) if f.dtype() == DType::F32 && f.is_contiguous() => Some(f),
        _ => None,
    }
}

/// A flex float tensor as flex's own tensor, moved (no handle is left behind); `None` for
/// another backend's.
pub(super) fn into_flex<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    match t.into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) => Some(f),
        _ => None,
    }
}

/// The inverse of [`into_flex`].
pub(super) fn from_flex<const D: usize>(f: FlexTensor) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor { kind: DispatchTensorKind::Flex(BackendTensor::Float(f)), autodiff: DispatchAutodiffContext::Disabled })
}

/// The address of a flex tensor's first element.
pub(super) fn address(f: &FlexTensor) -> usize {
    f.storage::<f32>().as_ptr() as usize + f.layout().start_offset() * 4
}

/// The values of a flex int tensor of row indices.
pub(super) fn host_rows(rows: &Tensor<1, Int>, n: usize) -> Option<Vec<usize>> {
    match rows.clone().into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Int(r)) => Some(indices(&r, n)),
        _ => None,
    }
}

/// Pieces a split gather or update is cut into, claimed one at a time by either thread.
const BLOCKS: usize = 16;

/// Slots of the per-step cache of row factors, keyed by the row's last step.
const MEMO: usize = 512;

/// How many rows ahead to prefetch: enough to cover a cache miss on a large table.
const AHEAD: usize = 16;

/// One step's row-sparse Adam over table rows.
pub(super) struct AdamKernel<'a> {
    step: RowStep,
    grad: &'a [f32],
    width: usize,
    step_size: f32,
    inv_sqrt_c2: f32,
}

impl<'a> AdamKernel<'a> {
    pub(super) fn new(step: &RowStep, grad: &'a [f32], width: usize) -> Self {
        let (step_size, inv_sqrt_c2) = step.corrections();
        Self { step: *step, grad, width, step_size: step_size as f32, inv_sqrt_c2: inv_sqrt_c2 as f32 }
    }

    /// Updates rows `work[j].1` of `at` with gradient row `work[j].0`.
    ///
    /// # Safety
    /// Every row in `work` lies inside `at`'s buffers, and no other thread reads or writes
    /// those rows while this runs.
    pub(super) unsafe fn run(&self, at: RowPtrs, work: &[(usize, usize)]) {
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

/// One dense parameter's Adam step (a head weight or bias), flattened: the parameter and both
/// moments updated in place in one pass. It does the same f32 operations in the same order as
/// `Optimizer::adam`'s composed tensor ops, so it gives the same bits. Those are about ten flex
/// ops per parameter, each allocating its result, and at batch 256 they were a tenth of a step.
///
/// # Shapes
/// - w, g, m, v: `[n]` → `[n]` each
pub(crate) fn dense_adam(w: Tensor<1>, g: Tensor<1>, m: Tensor<1>, v: Tensor<1>, step: &RowStep) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let flex = |t: Tensor<1>| owned(into_flex(t).expect("a flex tensor"));
    let (mut wf, mut mf, mut vf) = (flex(w), flex(m), flex(v));
    let gf = into_flex(g).expect("a flex tensor");
    let g = contiguous(&gf);
    let n = g.len();
    let (step_size, inv_sqrt_c2) = step.corrections();
    // A row updated on the previous step: no catch-up, one step's decay.
    let c = RowConsts {
        catch_up: 0.0,
        d1: step.beta1 as f32,
        d2: step.beta2 as f32,
        l2: step.l2 as f32,
        eps: step.eps as f32,
        one_b1: (1.0 - step.beta1) as f32,
        one_b2: (1.0 - step.beta2) as f32,
        step_size: step_size as f32,
        inv_sqrt_c2: inv_sqrt_c2 as f32,
    };
    adam_row(&mut wf.storage_mut::<f32>()[..n], &mut mf.storage_mut::<f32>()[..n], &mut vf.storage_mut::<f32>()[..n], &g, &c);
    (from_flex(wf), from_flex(mf), from_flex(vf))
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

/// One row's Adam update: the one element formula of the flex kernels, for table rows (with
/// the catch-up of the steps a row skipped) and dense parameters ([`dense_adam`]). Its f32
/// operations are those of `Optimizer::adam`'s composed tensor ops, in their order: g + w·l2
/// (only with L2), m·β1 + g·(1-β1), v·β2 + (g·g)·(1-β2), m·step / (√v·c + ε), w - update; so with
/// no catch-up it gives their bits. A function of its own so the compiler knows the four rows do
/// not overlap (they come from raw pointers) and vectorises the loops.
#[inline(always)]
fn adam_row(t: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &RowConsts) {
    let cols = t.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
    let with_l2 = c.l2 > 0.0;
    if c.catch_up == 0.0 {
        // Updated on the previous step (or never): no catch-up term, one square root and one
        // division per value instead of two.
        for (((t, m), v), &g) in cols {
            let g = if with_l2 { g + *t * c.l2 } else { g };
            *m = *m * c.d1 + g * c.one_b1;
            *v = *v * c.d2 + (g * g) * c.one_b2;
            *t -= (*m * c.step_size) / (v.sqrt() * c.inv_sqrt_c2 + c.eps);
        }
    } else {
        for (((t, m), v), &g) in cols {
            let g = if with_l2 { g + *t * c.l2 } else { g };
            let catch = *m * c.catch_up / (v.sqrt() + c.eps);
            *m = *m * c.d1 + g * c.one_b1;
            *v = *v * c.d2 + (g * g) * c.one_b2;
            *t -= (*m * c.step_size) / (v.sqrt() * c.inv_sqrt_c2 + c.eps) + catch;
        }
    }
}

/// A table and its Adam state as raw buffers whose rows are reached one at a time, so that
/// a helper thread can update some rows while this one reads others (see
/// `Pipeline::defer_adam`). Rows are `width` values; `last` has one value per row. Writes go
/// only through pointers taken from a unique borrow of the buffers (`storage_mut`).
#[derive(Clone, Copy)]
pub(super) struct RowPtrs {
    pub(super) t: *mut f32,
    pub(super) m: *mut f32,
    pub(super) v: *mut f32,
    pub(super) last: *mut f32,
}

// SAFETY: plain addresses; who may touch which row is the contract of `AdamKernel::run` and
// `copy_rows`.
unsafe impl Send for RowPtrs {}
unsafe impl Sync for RowPtrs {}

impl RowPtrs {
    /// The buffers of a table and its Adam state, through unique borrows (`storage_mut`, which
    /// copies a buffer first if another handle shares it): the tensors may be written through
    /// these pointers while they hold the buffers, which do not move. Large buffers are backed
    /// by huge pages first.
    pub(super) fn of(t: &mut FlexTensor, m: &mut FlexTensor, v: &mut FlexTensor, last: &mut FlexTensor) -> Self {
        for buf in [&*t, &*m, &*v] {
            huge_pages(buf.storage::<f32>());
        }
        Self {
            t: t.storage_mut::<f32>().as_mut_ptr(),
            m: m.storage_mut::<f32>().as_mut_ptr(),
            v: v.storage_mut::<f32>().as_mut_ptr(),
            last: last.storage_mut::<f32>().as_mut_ptr(),
        }
    }

    /// The same buffers from row `row` on.
    fn at_row(self, row: usize, width: usize) -> Self {
        let at = |p: *mut f32, k: usize| p.wrapping_add(k);
        Self { t: at(self.t, row * width), m: at(self.m, row * width), v: at(self.v, row * width), last: at(self.last, row) }
    }
}

/// A set of row indices for membership tests, by open addressing (a batch's few thousand
/// rows: faster than SipHash's `HashSet`).
pub(super) struct RowSet {
    slots: Vec<usize>,
    mask: usize,
}

impl RowSet {
    const EMPTY: usize = usize::MAX;

    pub(super) fn new(rows: &[usize]) -> Self {
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

    pub(super) fn contains(&self, row: usize) -> bool {
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
        let at = RowPtrs::of(&mut table, &mut m, &mut v, &mut last);
        let kernel = AdamKernel::new(&s, &g, w);
        if split_worthwhile(n, w, idx.len()) {
            // A table this large is updated at DRAM latency: two threads keep twice the misses
            // in flight. The table is cut into row-range blocks that either thread claims
            // whole, so a repeated row can never be updated by both at once, and a late
            // helper leaves its share to this one. (Over flex's rayon pool the
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
        assert!(tp.len() >= n * w, "a table of {n} rows of {w}");
        // SAFETY: `indices` checked every row against n, and the buffer holds n rows; no thread
        // writes it while this handle shares it (writers take it by `storage_mut`, which copies
        // a shared buffer).
        let copy = |out: &mut [f32], idx: &[usize]| unsafe { copy_rows(tp.as_ptr(), w, idx.iter().copied().enumerate(), out) };
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
