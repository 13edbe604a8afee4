//! What a training loop carries from one step to the next on flex's first helper: the next
//! batch's rows of the item table, fetched during this step ([`gather_ahead`], [`Pipeline::take`]),
//! and the item table's Adam update, left running into the next step ([`Pipeline::defer_adam`]).
//! Also that thread's other hand-overs: a result wanted later ([`later`]) and two pieces of work
//! side by side ([`beside`]).
//!
//! A deferred update owns what it writes: the table and its Adam state are moved out of the
//! model and the optimizer (which hold an empty stand-in meanwhile), written through pointers
//! taken from unique borrows of their buffers, and moved back by [`Pipeline::give_back`]. The
//! order between the jobs is explicit, not that of one thread's queue: a look-ahead copy reads
//! only rows the update has written or never writes, and the pipeline ends that copy before it
//! writes the table again or hands it back.

use burn::module::Param;
use burn::tensor::{Int, Tensor};

use crate::optim::Optimizer;

/// Work handed to a helper thread (flex builds) for a result wanted later, such as a training
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

/// `value` as a [`Later`] that is already there, for work done on the spot.
pub fn ready<T>(value: T) -> Later<T> {
    Later { out: std::sync::Arc::new(std::sync::Mutex::new(Some(value))), owed: None }
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
    /// The job's result: it runs here if the first helper has not started it, else this waits
    /// for it. Panics if the job panicked.
    pub fn get(self) -> T {
        #[cfg(feature = "flex")]
        drop(self.owed);
        #[cfg(not(feature = "flex"))]
        let _ = self.owed.map(std::thread::JoinHandle::join);
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take().expect("the job handed to `later` panicked")
    }
}

/// Runs `there` on the first helper while `here` runs on this one, which then joins the rows
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
/// [`Pipeline::take`]), and the item table with its Adam state while an update a step left
/// running on the first helper ([`Pipeline::defer_adam`]) holds them. The caller keeps one per
/// loop and hands it to every step; a step that does not defer takes the table back
/// ([`Pipeline::give_back`]), so after the loop's last step (which has no next batch) the model
/// and the optimizer are whole; [`Pipeline::finish`] checks that.
#[derive(Clone, Default)]
pub struct Pipeline {
    #[cfg(feature = "flex")]
    shared: std::sync::Arc<threaded::Shared>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

impl Pipeline {
    /// This step's rows `rows` of the item table if they are what was fetched ahead into this
    /// pipeline, with those an update changed since read again (waiting until a deferred update
    /// has written them). Where the table is lent to a deferred update, always the rows: else
    /// gathered from the table once that update has finished. `None` otherwise, and the caller
    /// gathers from `table` as usual.
    pub fn take(&self, table: &Tensor<2>, rows: &Tensor<1, Int>) -> Option<Tensor<2>> {
        #[cfg(feature = "flex")]
        return self.shared.take(table, rows);
        #[cfg(not(feature = "flex"))]
        {
            let _ = (table, rows);
            None
        }
    }

    /// Starts the fused Adam update of the item table (`table`, with the optimizer's state for
    /// it) at `rows` on the first helper and returns without waiting: the rows among `next` (the
    /// next step's) first, the others while the next step computes. The table and its state are
    /// lent to the update: `table` holds an empty `[0, width]` stand-in (and the optimizer no
    /// state for it) until [`Pipeline::give_back`]. A table already lent (the previous step's
    /// update) is updated again once that update has finished, without going back.
    ///
    /// `Err(grad)` where this is not done, with the table and its state where they belong: update
    /// as usual. It is done on flex for a table past the caches with enough rows, whose update
    /// waits on DRAM (NeuMF factor 8, 1M items, batch 4096: −0.24 ms of ~2.5 a step); a table in
    /// the caches updates quickly, and deferring it measured no faster (10k items).
    ///
    /// # Shapes
    /// - table: `[n, width]`; rows: `[r]` (unique); grad: `[r, width]`
    pub fn defer_adam(
        &self,
        table: &mut Param<Tensor<2>>,
        optim: &mut Optimizer,
        rows: &Tensor<1, Int>,
        grad: Tensor<2>,
        next: &[i32],
    ) -> Result<(), Tensor<2>> {
        #[cfg(feature = "flex")]
        return self.shared.defer_adam(table, optim, rows, grad, next);
        #[cfg(not(feature = "flex"))]
        {
            let _ = (table, optim, rows, next);
            Err(grad)
        }
    }

    /// Finishes the deferred update, if any, and puts the table and its state back into `table`
    /// and the optimizer: call before anything else reads or writes them.
    pub fn give_back(&self, table: &mut Param<Tensor<2>>, optim: &mut Optimizer) {
        #[cfg(feature = "flex")]
        self.shared.give_back(table, optim);
        #[cfg(not(feature = "flex"))]
        let _ = (table, optim);
    }

    /// Ends the work this pipeline has running. Call before reading the model or the optimizer
    /// after the loop. Panics if the item table is still lent (the last step was given a next
    /// batch): the model would hold its stand-in.
    pub fn finish(&self) {
        #[cfg(feature = "flex")]
        self.shared.finish();
    }
}

/// A [`gather_ahead`] under way; dropping it waits for the copy if it is running and cancels it
/// if it has not started. The pipeline also ends it before it writes the table or hands it back.
#[must_use = "the first helper may read the table until this is dropped"]
pub struct Pending {
    #[cfg(feature = "flex")]
    pipeline: Option<Pipeline>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        #[cfg(feature = "flex")]
        if let Some(p) = &self.pipeline {
            p.shared.end_gather();
        }
    }
}

/// Starts copying, on the first helper and while this one runs the forward and backward passes,
/// the rows `next` of `table` that the next step will gather into `into`, leaving those this
/// step's update changes (or a deferred update may still be writing) for [`Pipeline::take`] to
/// read; then, for a table past the caches, it reads this step's `rows` of the table and of its
/// Adam `state` (m, v, last-step stamps) into its caches, for the update it starts after the
/// backward pass (or defers). Where
/// [`super::update_beside`] holds; elsewhere nothing is done. Where `into` holds the table (lent
/// to a deferred update), that table and its state are read instead of `table` and `state`.
///
/// # Shapes
/// - table, m, v: `[n, width]`; last: `[n]`; rows: `[r]`
pub fn gather_ahead(table: &Tensor<2>, rows: &Tensor<1, Int>, next: &[i32], into: &Pipeline, state: Option<(&Tensor<2>, &Tensor<2>, &Tensor<1>)>) -> Pending {
    #[cfg(feature = "flex")]
    if super::update_beside(table, rows.dims()[0]) {
        into.shared.gather_ahead(table, rows, next, state);
        return Pending { pipeline: Some(into.clone()) };
    }
    let _ = (table, rows, next, into, state);
    Pending {
        #[cfg(feature = "flex")]
        pipeline: None,
    }
}

/// The pipeline's state on flex, and the jobs it runs on the first helper.
#[cfg(feature = "flex")]
mod threaded {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    use burn::backend::flex::FlexTensor;
    use burn::module::{Param, ParamId};
    use burn::tensor::{Device, Int, Tensor, TensorData};

    use super::super::flex::{AdamKernel, RowPtrs, RowSet, address, copy_rows, flex_f32, from_flex, host_rows, into_flex, owned, rows_of, split_worthwhile};
    use super::super::{AdamRows, RowStep, gather};
    use crate::optim::{Optimizer, TableSide};
    use crate::second_core::{Owed, Ticket};

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[derive(Default)]
    pub(in super::super) struct Shared {
        /// Rows the look-ahead job fetched; written by that job, which touches nothing else here.
        ahead: Arc<Mutex<Option<Ahead>>>,
        /// The rest, touched only by the training loop's thread.
        state: Mutex<State>,
    }

    /// Rows fetched ahead by [`super::gather_ahead`]: from which buffer (its address) and rows,
    /// the copied rows, and the positions left for [`super::Pipeline::take`] to read.
    struct Ahead {
        table: usize,
        rows: Vec<usize>,
        out: Vec<f32>,
        stale: Vec<usize>,
    }

    #[derive(Default)]
    struct State {
        /// The look-ahead job, which may read the table. Declared before `lent` so that, dropped
        /// first, the job has ended before the buffers it may read go.
        gathering: Option<Ticket>,
        /// The item table and its state while a deferred update holds them.
        lent: Option<Lent>,
    }

    /// A table and its Adam state moved out of the model and the optimizer, and the update of
    /// them running on the first helper ([`Shared::defer_adam`]).
    struct Lent {
        /// `None` once run or taken back.
        owed: Option<Owed>,
        flags: Arc<Flags>,
        /// The rows it updates first (the next step's), and all the rows it updates.
        next: Vec<usize>,
        rows: Arc<[usize]>,
        /// The buffers, `n` rows of `w`: the job writes through these pointers, taken from unique
        /// borrows; readers of rows it has written, or never writes, read through them too
        /// (never through a borrow of a whole buffer, parts of which it may be writing).
        at: RowPtrs,
        n: usize,
        w: usize,
        /// The table, m, v and last-step stamps, handed back here by the job when it ends.
        back: Arc<Mutex<Option<[FlexTensor; 4]>>>,
    }

    #[derive(Default)]
    struct Flags {
        /// The rows among `next` are written (or the job stopped).
        ready: AtomicBool,
        /// The job ran to its end.
        complete: AtomicBool,
    }

    impl Lent {
        /// Waits until this step's rows `rows` are written, if they are the rows it updates first;
        /// `false` (nothing waited for) if they are not.
        fn rows_ready(&mut self, rows: &[usize]) -> bool {
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
        fn finish(&mut self) {
            drop(self.owed.take());
            assert!(self.flags.complete.load(Ordering::Acquire), "the deferred row update on the first helper panicked");
        }

        /// The updated table, once the update has finished (a handle on the lent buffer).
        fn table(&mut self) -> Tensor<2> {
            self.finish();
            from_flex(lock(&self.back).as_ref().expect("a finished update hands its tensors back")[0].clone())
        }

        /// The updated table and state, once the update has finished.
        fn into_rows(mut self) -> AdamRows {
            self.finish();
            let [t, m, v, last] = lock(&self.back).take().expect("a finished update hands its tensors back");
            AdamRows { table: from_flex(t), m: from_flex(m), v: from_flex(v), last: from_flex(last) }
        }
    }

    impl State {
        /// Ends the look-ahead job: waits for it if it is running, cancels it if not started.
        fn end_gather(&mut self) {
            drop(self.gathering.take());
        }

        /// Returns once the lent table's update, if any, has written this step's rows `rows`
        /// that it updates: at once where it updated them first (they were the rows it was told
        /// come next), else after it has finished (also where `rows` is `None`: unknown).
        fn ready_for(&mut self, rows: Option<&[usize]>) {
            if let Some(l) = self.lent.as_mut()
                && !rows.is_some_and(|r| l.rows_ready(r))
            {
                l.finish();
            }
        }
    }

    /// Where the look-ahead job reads the table (and the state, for the cache warm-up).
    enum Source {
        /// The lent buffers (see [`Lent::at`]).
        Lent(RowPtrs),
        /// Handles on the model's table and the optimizer's state: they keep the buffers alive,
        /// and while they share them no one writes them in place (a writer takes a buffer by
        /// `storage_mut`, which copies a shared one).
        Shared(FlexTensor, Option<[FlexTensor; 3]>),
    }

    /// Moves the tensor out of `param` and puts `value` in its place (same id and mapper).
    fn replace(param: &mut Param<Tensor<2>>, value: Tensor<2>) -> Tensor<2> {
        let stand_in = Param::initialized(ParamId::new(), value.clone());
        let (id, old, mapper) = std::mem::replace(param, stand_in).consume();
        *param = Param::from_mapped_value(id, value, mapper);
        old
    }

    /// The table and its state into the model's parameter and the optimizer.
    fn put_back(table: &mut Param<Tensor<2>>, optim: &mut Optimizer, rows: AdamRows) {
        let t = optim.put_rows(TableSide::Item, rows);
        drop(replace(table, t));
    }

    /// A flex tensor moved out of `t`, the one handle on its buffer (a shared buffer, or a view,
    /// is copied here), so that it can be written in place.
    fn unique<const D: usize>(t: Tensor<D>) -> FlexTensor {
        owned(into_flex(t).expect("a flex tensor (checked by the caller)"))
    }

    /// Reads rows of `ahead` into its copy, if `tp` is the buffer it was fetched from and `rows`
    /// its rows: the rows fetched ahead, with the stale ones read now.
    ///
    /// # Safety
    /// If `tp` is that buffer's address: it holds every row of `rows` (`w` values each), and no
    /// thread writes the stale rows while this runs.
    unsafe fn take_ahead(ahead: Ahead, tp: *const f32, w: usize, rows: Vec<usize>, device: &Device) -> Option<Tensor<2>> {
        if tp as usize != ahead.table || rows != ahead.rows {
            return None;
        }
        let mut out = ahead.out;
        // SAFETY: the caller's.
        unsafe { copy_rows(tp, w, ahead.stale.iter().map(|&i| (i, rows[i])), &mut out) };
        Some(Tensor::from_data(TensorData::new(out, [rows.len(), w]), device))
    }

    impl Shared {
        pub(super) fn end_gather(&self) {
            lock(&self.state).end_gather();
        }

        /// See [`super::Pipeline::take`].
        pub(super) fn take(&self, table: &Tensor<2>, rows: &Tensor<1, Int>) -> Option<Tensor<2>> {
            let mut st = lock(&self.state);
            st.end_gather();
            let n = st.lent.as_ref().map_or(table.dims()[0], |l| l.n);
            let want = host_rows(rows, n);
            st.ready_for(want.as_deref());
            let ahead = lock(&self.ahead).take();
            let device = table.device();
            let got = ahead.zip(want).and_then(|(ahead, want)| match &st.lent {
                // SAFETY: the lent buffers hold n rows (`want` was checked against n) and stay
                // alive while lent; `ready_for` has waited until the update wrote the rows of
                // `want` it updates (or finished it), and it writes no other row of `want`.
                Some(l) => unsafe { take_ahead(ahead, l.at.t, l.w, want, &device) },
                None => {
                    let t = flex_f32(table)?;
                    // SAFETY: `t` keeps the buffer of n rows alive, and while it shares it no one
                    // writes it in place (nothing is lent here: no update runs on it).
                    unsafe { take_ahead(ahead, address(&t) as *const f32, table.dims()[1], want, &device) }
                }
            });
            match (got, st.lent.as_mut()) {
                // Not what was fetched: gathered from the lent table once its update is done.
                (None, Some(l)) => Some(gather(l.table(), rows.clone())),
                (got, _) => got,
            }
        }

        /// See [`super::gather_ahead`].
        pub(super) fn gather_ahead(&self, table: &Tensor<2>, rows: &Tensor<1, Int>, next: &[i32], state: Option<(&Tensor<2>, &Tensor<2>, &Tensor<1>)>) {
            let mut st = lock(&self.state);
            st.end_gather();
            let [n, w] = st.lent.as_ref().map_or(table.dims(), |l| [l.n, l.w]);
            let Some(now) = host_rows(rows, n) else { return };
            if next.iter().any(|&r| r < 0 || r as usize >= n) {
                return;
            }
            // This step's rows of a lent table are read below: once its update has written them
            // (`take` has waited for that already).
            st.ready_for(Some(&now));
            let next: Vec<usize> = next.iter().map(|&r| r as usize).collect();
            let lent_rows = st.lent.as_ref().map(|l| l.rows.clone());
            let source = match &st.lent {
                Some(l) => Source::Lent(l.at),
                None => {
                    let Some(t) = flex_f32(table) else { return };
                    // The table's Adam state, when it has the table's shape and lies past the
                    // caches: a table in the caches gains nothing from the warm-up, and the
                    // helper is better spent on its share of the pass (ML-1M's 3706 items, batch
                    // 4096: 1.10 → 1.07 ms/step without it).
                    let moments = state
                        .filter(|(m, v, last)| m.dims() == [n, w] && v.dims() == [n, w] && last.dims() == [n])
                        .filter(|_| split_worthwhile(n, w, now.len()))
                        .and_then(|(m, v, last)| Some([flex_f32(m)?, flex_f32(v)?, flex_f32(last)?]));
                    Source::Shared(t, moments)
                }
            };
            let ahead = self.ahead.clone();
            st.gathering = crate::second_core::post(move || {
                let (tp, moments) = match &source {
                    Source::Lent(at) => (at.t as *const f32, Some([at.m as *const f32, at.v as *const f32, at.last as *const f32])),
                    Source::Shared(t, moments) => (address(t) as *const f32, moments.as_ref().map(|ms| ms.each_ref().map(|m| address(m) as *const f32))),
                };
                // Left for `take`: rows this step's update changes, and rows the lent update may
                // still be writing (read by no one until it has).
                let skip: Vec<usize> = now.iter().chain(lent_rows.iter().flat_map(|r| r.iter())).copied().collect();
                let skip = RowSet::new(&skip);
                let is_stale: Vec<bool> = next.iter().map(|&r| skip.contains(r)).collect();
                let mut out = vec![0f32; next.len() * w];
                let fresh = next.iter().copied().enumerate().filter(|&(i, _)| !is_stale[i]);
                // SAFETY: every row is below n (checked above) in buffers of n rows of w, kept alive
                // by `source`'s handles, or, lent, by the pipeline, which ends this job before it
                // writes them again or hands them back. The rows read are written by no one
                // meanwhile: a shared buffer is written by no one in place (see `Source`), and
                // the lent update writes none of these rows (its rows are skipped).
                unsafe { copy_rows(tp, w, fresh, &mut out) };
                let stale = (0..next.len()).filter(|&i| is_stale[i]).collect();
                *lock(&ahead) = Some(Ahead { table: tp as usize, rows: next, out, stale });
                // This step's rows of the table and its Adam state, into this core's caches for the
                // update this thread starts after the backward pass (`beside`), in row order as
                // its blocks are claimed. Loads, not prefetch hints, which are dropped once too
                // many misses are in flight.
                if let Some([mp, vp, lp]) = moments {
                    let mut sorted = now;
                    sorted.sort_unstable();
                    let mut sum = 0f32;
                    for &row in &sorted {
                        for buf in [tp, mp, vp] {
                            // SAFETY: as above, for this step's rows: below n, and the lent
                            // update has written them already (`ready_for`); the step's own
                            // update of them starts after this job has ended.
                            let r = unsafe { std::slice::from_raw_parts(buf.add(row * w), w) };
                            sum += r.iter().step_by(16).sum::<f32>() + r[w - 1];
                        }
                        // SAFETY: the same, for the row's stamp (one value a row).
                        sum += unsafe { *lp.add(row) };
                    }
                    std::hint::black_box(sum);
                }
            });
        }

        /// See [`super::Pipeline::defer_adam`].
        pub(super) fn defer_adam(
            &self,
            table: &mut Param<Tensor<2>>,
            optim: &mut Optimizer,
            rows: &Tensor<1, Int>,
            grad: Tensor<2>,
            next: &[i32],
        ) -> Result<(), Tensor<2>> {
            let mut st = lock(&self.state);
            st.end_gather();
            // The table and its state, owned: back from the previous step's update, or moved
            // out of the model (an empty stand-in left) and the optimizer.
            let own = match st.lent.take() {
                Some(l) => l.into_rows(),
                None => {
                    let [_, w] = table.val().dims();
                    let stand_in = Tensor::<2>::zeros([0, w], &table.val().device());
                    let t = replace(table, stand_in);
                    optim.take_rows(TableSide::Item, t)
                }
            };
            match lend(own, rows, grad, optim.row_step(), next) {
                Ok(l) => {
                    st.lent = Some(l);
                    Ok(())
                }
                Err((own, grad)) => {
                    put_back(table, optim, own);
                    Err(grad)
                }
            }
        }

        /// See [`super::Pipeline::give_back`].
        pub(super) fn give_back(&self, table: &mut Param<Tensor<2>>, optim: &mut Optimizer) {
            let mut st = lock(&self.state);
            st.end_gather();
            if let Some(l) = st.lent.take() {
                put_back(table, optim, l.into_rows());
            }
        }

        /// See [`super::Pipeline::finish`].
        pub(super) fn finish(&self) {
            let mut st = lock(&self.state);
            st.end_gather();
            if let Some(l) = st.lent.as_mut() {
                l.finish();
                panic!("Pipeline::finish: the item table is still lent to a deferred update (the last step was given a next batch); `give_back` returns it");
            }
        }

        /// This step's rows `rows` of the lent table once the update has written them (as
        /// `take` waits for them), read while the update may still write the others.
        #[cfg(test)]
        pub(super) fn lent_rows(&self, rows: &[usize]) -> Option<Vec<f32>> {
            let mut st = lock(&self.state);
            st.ready_for(Some(rows));
            let l = st.lent.as_ref()?;
            let mut out = vec![0f32; rows.len() * l.w];
            // SAFETY: as in `take`: rows below n that the update has written, or never writes.
            unsafe { copy_rows(l.at.t, l.w, rows.iter().copied().enumerate(), &mut out) };
            Some(out)
        }
    }

    /// Starts the update of `own` at `rows` on the first helper, the rows `next` first;
    /// `Err` with its inputs where this is not done (see `Pipeline::defer_adam`).
    fn lend(own: AdamRows, rows: &Tensor<1, Int>, grad: Tensor<2>, step: RowStep, next: &[i32]) -> Result<Lent, (AdamRows, Tensor<2>)> {
        let [n, w] = own.table.dims();
        let fits = own.m.dims() == [n, w] && own.v.dims() == [n, w] && own.last.dims() == [n] && grad.dims()[1] == w;
        let on_flex = flex_f32(&own.table).is_some()
            && flex_f32(&own.m).is_some()
            && flex_f32(&own.v).is_some()
            && flex_f32(&own.last).is_some()
            && flex_f32(&grad).is_some();
        let idx = (fits && on_flex && split_worthwhile(n, w, rows.dims()[0])).then(|| host_rows(rows, n)).flatten();
        let Some(idx) = idx else { return Err((own, grad)) };
        let (mut t, mut m, mut v, mut last) = (unique(own.table), unique(own.m), unique(own.v), unique(own.last));
        let g = into_flex(grad).expect("a flex tensor (checked above)");
        // Each handle is its buffer's only one (`unique`), so nothing is copied; the job holds
        // the handles, and the buffers stay where they are, while it writes through `at`.
        let at = RowPtrs::of(&mut t, &mut m, &mut v, &mut last);
        let next: Vec<usize> = next.iter().filter_map(|&r| usize::try_from(r).ok()).collect();
        let (flags, back) = (Arc::new(Flags::default()), Arc::new(Mutex::new(None)));
        let idx: Arc<[usize]> = idx.into();
        let (job_flags, job_back, job_next, job_rows) = (flags.clone(), back.clone(), next.clone(), idx.clone());
        let job = move || {
            let update = || {
                let (g, w) = rows_of(&g);
                let kernel = AdamKernel::new(&step, &g, w);
                let wanted = RowSet::new(&job_next);
                let (first, rest): (Vec<_>, Vec<_>) = job_rows.iter().copied().enumerate().partition(|&(_, r)| wanted.contains(r));
                // SAFETY: the rows are inside the buffers (`host_rows` checked them against n),
                // which this job owns (`t`, `m`, `v`, `last`: no other handle exists) and writes
                // only through `at`; until `ready` no one reads these rows (`Lent::rows_ready`).
                unsafe { kernel.run(at, &first) };
                job_flags.ready.store(true, Ordering::Release);
                // SAFETY: the same; the rows not among `next` no one reads until `complete`
                // (readers skip them: `Shared::gather_ahead`, or wait: `State::ready_for`).
                unsafe { kernel.run(at, &rest) };
            };
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(update)).is_ok();
            // The buffers go back whatever happened: readers hold their addresses.
            *lock(&job_back) = Some([t, m, v, last]);
            job_flags.complete.store(done, Ordering::Release);
            // So that no one waits forever on a job that panicked before its first rows.
            job_flags.ready.store(true, Ordering::Release);
        };
        let owed = crate::second_core::post_owed(job);
        Ok(Lent { owed, flags, next, rows: idx, at, n, w, back })
    }
}

#[cfg(test)]
mod later_tests {
    use super::*;

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
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::super::{AdamRows, RowStep, adam_rows, expect_update, sgd_rows, update_beside};
    use super::*;
    use crate::optim::{OptimConfig, RowMoments};
    use burn::tensor::{Device, Distribution, TensorData};

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn ints(v: &[i32], d: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), d)
    }

    /// A table of 60,000 rows of 40 values (past the caches), and this step's and the next
    /// step's 3000 rows: distinct within each, 1 in 11 shared. `(n, w, now, next)`.
    fn two_steps() -> (usize, usize, Vec<i32>, Vec<i32>) {
        let r = 3000;
        let now: Vec<i32> = (0..r).map(|k| k * 17).collect();
        let next: Vec<i32> = (0..r).map(|k| if k % 11 == 0 { k * 17 } else { k * 17 + 5 }).collect();
        (60_000, 40, now, next)
    }

    #[test]
    fn rows_fetched_ahead_are_taken_with_the_updated_rows_read_again() {
        let d = Device::flex();
        let (n, w, now, next) = two_steps();
        let r = now.len();
        let ints = |v: &[i32]| ints(v, &d);
        let mut table = Tensor::<2>::random([n, w], Distribution::Normal(0.0, 0.1), &d);
        assert!(update_beside(&table, r), "a table past the caches");
        // The copy runs on the first helper; retried in case it had not started before the drop.
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

    #[test]
    fn a_deferred_update_writes_the_next_rows_first_and_ends_as_the_update_in_place() {
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
        let config = OptimConfig { lr: 0.01, l2: 1e-4, ..Default::default() };
        let step = RowStep { t: 6.0, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 1e-4 };
        assert!(update_beside(&table, r), "the first helper's path");
        let want = adam_rows(AdamRows { table: copy(&table), m: copy(&m), v: copy(&v), last: last.clone() + 0.0 }, ints(&now), grad.clone(), step);
        // The model's table and the optimizer's state for it, at step 6.
        let start = || {
            let mut optim = Optimizer::new(config.clone());
            optim.step = 6;
            optim.item = Some(RowMoments { m: copy(&m), v: copy(&v), last: last.clone() + 0.0 });
            (Param::from_tensor(copy(&table)), optim)
        };
        let next_idx: Vec<usize> = next.iter().map(|&r| r as usize).collect();
        for _ in 0..5 {
            let (mut param, mut optim) = start();
            let pipeline = Pipeline::default();
            expect_update(&param.val(), r);
            assert!(pipeline.defer_adam(&mut param, &mut optim, &ints(&now), grad.clone(), &next).is_ok(), "deferred on flex");
            assert_eq!(param.val().dims(), [0, w], "the model holds a stand-in while the table is lent");
            assert!(optim.item.is_none(), "and the optimizer no state for it");
            // The next step's rows are final once written first, the rest may not be yet.
            let first = pipeline.shared.lent_rows(&next_idx).expect("lent");
            assert_eq!(first, values(want.table.clone().select(0, ints(&next))));
            pipeline.give_back(&mut param, &mut optim);
            let state = optim.item.as_ref().expect("given back");
            assert_eq!(values(param.val()), values(want.table.clone()));
            assert_eq!(values(state.m.clone()), values(want.m.clone()));
            assert_eq!(values(state.v.clone()), values(want.v.clone()));
            assert_eq!(state.last.clone().into_data().try_into_vec_as::<f32>().unwrap(), want.last.clone().into_data().try_into_vec_as::<f32>().unwrap());
            pipeline.finish();
        }
        // Rows other than those announced: taken from the table once the whole update is done.
        let (mut param, mut optim) = start();
        let pipeline = Pipeline::default();
        assert!(pipeline.defer_adam(&mut param, &mut optim, &ints(&now), grad, &next).is_ok());
        let got = pipeline.take(&param.val(), &ints(&now)).expect("the lent table's rows");
        assert_eq!(values(got), values(want.table.clone().select(0, ints(&now))));
        // Not given back: `finish` says so rather than leave the model its stand-in.
        let unfinished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.finish()));
        assert!(unfinished.is_err());
        pipeline.give_back(&mut param, &mut optim);
        assert_eq!(values(param.val()), values(want.table));
    }
}
