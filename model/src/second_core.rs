//! Helper threads for the training step's CPU kernels: as many as `--threads` allows besides the
//! caller (rayon's global pool size minus one), kept alive between steps. A large table's row
//! update waits on DRAM, and every added core keeps more cache misses in flight; the fused head
//! pass splits its batch into slices. Spawning threads for it each step costs 80–200 µs on the
//! 2-core VM this was measured on (as much as the split saves), and waking rayon's pool for each
//! of a step's half-dozen parallel pieces costs about as much, so the helpers are kept here. Each
//! step's start wakes them ([`expect_work`]); they then spin (politely, yielding) until a few
//! milliseconds have passed or a millisecond after their last job, so they are already running
//! when the gather, the head pass or the update shares its work with them ([`for_each`]). While
//! steps keep coming they stay busy; they park within milliseconds once steps stop (evaluation,
//! I/O).
//!
//! Work is shared by claiming: [`for_each`]'s pieces go to whichever thread asks next, and a
//! helper that has not started by the time the caller has run out of pieces is taken back, so a
//! descheduled helper never holds the caller up by more than the piece it holds. Which thread
//! runs a piece never changes a result: every caller writes each piece's output to a place of its
//! own and combines them in piece order.
//!
//! [`beside`] starts one piece of work on a helper while the caller does another; what that
//! piece shares ([`for_each`]) the caller joins as soon as its own piece is done. The step uses it
//! to start the item table's update while the head and the user table are updated. [`post`]
//! queues a job nobody waits for until its ticket is dropped: the step uses it to copy the next
//! batch's rows of that table, and read this batch's, while the forward and backward passes run.
//! [`post_owed`] queues one that must run: a large item table's update, left running into the
//! next step (`rows::Pipeline`), and the training loop's next batch (`rows::later`). Posted jobs
//! run on the first helper, one at a time, in the order posted.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper keeps spinning after a job before it parks.
const LINGER: Duration = Duration::from_millis(1);

/// A job on the caller's stack; valid until the caller has seen `done` (see [`share`]).
type JobRef = &'static (dyn Fn() + Sync);

/// One helper thread's hand-over slot.
struct Helper {
    job: Mutex<Option<JobRef>>,
    wake: Condvar,
    /// Set once the job it took last has returned.
    done: AtomicBool,
    /// Whether it waits on `wake`; changed and read only under `job`'s lock, so a waker knows
    /// whether to signal (a futex wake-up is a system call, in every step's hand-overs).
    parked: AtomicBool,
}

impl Helper {
    /// Signals the helper if it is parked; call with `job`'s lock held.
    fn nudge(&self) {
        if self.parked.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

struct Shared {
    helpers: Box<[Helper]>,
    panicked: AtomicBool,
    /// Nanoseconds since `epoch` until which the helpers spin instead of parking.
    spin_until: AtomicU64,
    epoch: Instant,
    /// One caller at a time; others run all of their work themselves.
    busy: Mutex<()>,
    /// Work a helper shares back while running a [`beside`] job (a [`share`] made on a helper
    /// itself): the caller joins it once its own half is done.
    help: Mutex<Option<JobRef>>,
    /// How many runs of the `help` job are under way on the caller's thread.
    helping: AtomicUsize,
    /// Jobs run in the order posted ([`post`], [`post_owed`]), by the first helper.
    posted: Mutex<PostedSlot>,
}

/// The queue of [`post`] and [`post_owed`]: jobs not yet started, in order, and the one
/// running, each with its post's id.
#[derive(Default)]
struct PostedSlot {
    jobs: std::collections::VecDeque<(u64, Box<dyn FnOnce() + Send>)>,
    running: Option<u64>,
    last_id: u64,
}

thread_local! {
    /// Whether this is a helper thread.
    static HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Helper `me`'s loop: its own slot first, then (the first helper only) the posted queue,
    /// then spin or park.
    fn worker(&self, me: usize) {
        let h = &self.helpers[me];
        loop {
            let job = {
                let mut slot = h.job.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = slot.take() {
                        break job;
                    }
                    let posted = if me == 0 {
                        let mut p = self.posted.lock().unwrap_or_else(|e| e.into_inner());
                        let job = p.jobs.pop_front();
                        p.running = job.as_ref().map(|j| j.0);
                        job
                    } else {
                        None
                    };
                    if let Some((_, posted)) = posted {
                        drop(slot);
                        // Its ticket's owner waits for it and cannot be told of a panic here: a
                        // posted job reports through its own state (see `post`, `post_owed`).
                        let _ = catch_unwind(AssertUnwindSafe(posted));
                        self.posted.lock().unwrap_or_else(|e| e.into_inner()).running = None;
                        slot = h.job.lock().unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    if self.now() < self.spin_until.load(Ordering::Acquire) {
                        drop(slot);
                        // Polite spinning: burn's pool or another process may want this core.
                        std::thread::yield_now();
                        slot = h.job.lock().unwrap_or_else(|e| e.into_inner());
                    } else {
                        h.parked.store(true, Ordering::Relaxed);
                        slot = h.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                        h.parked.store(false, Ordering::Relaxed);
                    }
                }
            };
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            // Stay awake a little for the next hand-over (the next step's gather follows this
            // step's update within microseconds); park after that.
            self.spin_until.fetch_max(self.now() + LINGER.as_nanos() as u64, Ordering::AcqRel);
            h.done.store(true, Ordering::Release);
        }
    }

    /// Wakes every parked helper (it re-reads `spin_until` and its slot).
    fn wake_all(&self) {
        for h in &self.helpers {
            // Under the slot's lock, so a helper cannot check its slot and park in between.
            let _slot = h.job.lock().unwrap_or_else(|e| e.into_inner());
            h.nudge();
        }
    }
}

/// The helpers, started on first use: rayon's global pool size (`--threads`) minus one; `None`
/// for one thread or if none could be spawned.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *SHARED.get_or_init(|| {
        // `--threads 1`: no helper; their jobs run on the caller, in the same order.
        let wanted = rayon::current_num_threads().saturating_sub(1);
        if wanted == 0 {
            return None;
        }
        let s: &'static Shared = Box::leak(Box::new(Shared {
            helpers: (0..wanted)
                .map(|_| Helper { job: Mutex::new(None), wake: Condvar::new(), done: AtomicBool::new(false), parked: AtomicBool::new(false) })
                .collect(),
            panicked: AtomicBool::new(false),
            spin_until: AtomicU64::new(0),
            epoch: Instant::now(),
            busy: Mutex::new(()),
            help: Mutex::new(None),
            helping: AtomicUsize::new(0),
            posted: Mutex::new(PostedSlot::default()),
        }));
        // The first helper must start: it runs the posted jobs. Later ones are best effort (a
        // helper that did not start would only never take its slot's work, which is taken back).
        for me in 0..wanted {
            let run = move || {
                HELPER.with(|c| c.set(true));
                s.worker(me)
            };
            let started = std::thread::Builder::new().name(format!("ncf-rows-{me}")).spawn(run).is_ok();
            if me == 0 && !started {
                return None;
            }
        }
        Some(s)
    })
}

/// Asks the helpers to be awake for the next `within`: call it well before a [`share`] so the
/// wake-up overlaps other work.
pub fn expect_work(within: Duration) {
    if let Some(s) = shared() {
        s.spin_until.fetch_max(s.now() + within.as_nanos() as u64, Ordering::AcqRel);
        s.wake_all();
    }
}

/// Runs `work` here and, at the same time, on up to `extra` helpers; returns once this thread's
/// call has returned and every helper's has too, or never started (taken back: a descheduled
/// helper never holds the caller up). `work` must split its work with the other calls through
/// shared state (e.g. an atomic cursor over pieces); each call should run until none is left.
/// A panic on a helper is raised here.
///
/// Called on a helper itself (inside a [`beside`] job), the other thread is the one that called
/// `beside`, which joins `work` once its own half is done.
pub fn share(work: &(dyn Fn() + Sync), extra: usize) {
    let Some(s) = shared() else { return work() };
    if HELPER.with(|c| c.get()) {
        return s.share_back(work);
    }
    with_helpers(work, extra, work);
}

/// Runs `there` on a helper while `here` runs on this thread, and returns both results; `there`
/// runs here if no helper has started it by the time `here` is done. Work that `there` shares
/// ([`share`], [`for_each`]) is joined by this thread after `here`. For unequal pieces of work
/// that may run at once, such as updating two tables.
pub fn beside<A: Send, B>(there: impl FnOnce() -> A + Send, here: impl FnOnce() -> B) -> (A, B) {
    let there = Mutex::new(Some(there));
    let out = Mutex::new(None);
    let run = || {
        let f = there.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            let a = f();
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
        }
    };
    let b = with_helpers(&run, 1, here);
    run();
    let a = out.into_inner().unwrap_or_else(|e| e.into_inner()).expect("`there` ran on one of the threads");
    (a, b)
}

impl Shared {
    /// [`share`] on a helper: offers `work` to the caller waiting in [`with_helpers`].
    fn share_back(&self, work: &(dyn Fn() + Sync)) {
        // SAFETY: `work` is taken back under the lock below, and this function does not return
        // before every run the other thread started has ended.
        let job = unsafe { erase(work) };
        *self.help.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        struct Withdraw<'a>(&'a Shared);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                self.0.help.lock().unwrap_or_else(|e| e.into_inner()).take();
                while self.0.helping.load(Ordering::Acquire) > 0 {
                    std::hint::spin_loop();
                }
            }
        }
        let withdraw = Withdraw(self);
        work();
        drop(withdraw);
    }

    /// Runs the work a helper shares back, if any, once.
    fn join_help(&self) {
        let job = {
            let slot = self.help.lock().unwrap_or_else(|e| e.into_inner());
            let Some(job) = *slot else { return };
            self.helping.fetch_add(1, Ordering::AcqRel);
            job
        };
        struct Done<'a>(&'a Shared);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.helping.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done(self);
        // Raised by `with_helpers` once the helpers are done with the caller's stack.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            self.panicked.store(true, Ordering::Release);
        }
    }
}

/// `job`, which borrows from the caller, as 'static, to cross to another thread.
///
/// # Safety
/// The caller must not return or unwind before the other threads' last use of it.
unsafe fn erase(job: &(dyn Fn() + Sync)) -> JobRef {
    // SAFETY: only the lifetime changes; the caller keeps the borrow alive (see above).
    unsafe { std::mem::transmute::<&(dyn Fn() + Sync), JobRef>(job) }
}

/// Hands `job` to up to `extra` helpers, runs `here` on this thread, then takes `job` back from
/// each helper that has not started it, or joins what it shares back and waits until it has
/// finished.
fn with_helpers<R>(job: &(dyn Fn() + Sync), extra: usize, here: impl FnOnce() -> R) -> R {
    let Some(s) = shared() else { return here() };
    let Ok(_busy) = s.busy.try_lock() else { return here() };
    let used = &s.helpers[..extra.min(s.helpers.len())];
    // SAFETY: this function does not return or unwind past `Wait` before each helper either
    // never took the job (taken back below) or has set `done` after its last use of it.
    let job = unsafe { erase(job) };
    for h in used {
        h.done.store(false, Ordering::Release);
        let mut slot = h.job.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(job);
        h.nudge();
    }

    /// Takes the job back from each helper that has not started it, else waits for it; also on
    /// unwind.
    struct Wait<'a>(&'a Shared, &'a [Helper]);
    impl Drop for Wait<'_> {
        fn drop(&mut self) {
            for h in self.1 {
                if h.job.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
                    continue;
                }
                while !h.done.load(Ordering::Acquire) {
                    self.0.join_help();
                    std::hint::spin_loop();
                }
            }
        }
    }
    let wait = Wait(s, used);
    let r = here();
    drop(wait);
    if s.panicked.swap(false, Ordering::AcqRel) {
        panic!("a row-kernel helper thread panicked");
    }
    r
}

/// Hands `job` to the first helper to run after the jobs posted before it, and returns at once;
/// `None` (and `job` not run) where there is no helper. The caller must drop the [`Ticket`]
/// before anything `job` reads may change or go away: that waits if it is running and cancels it
/// if it has not started. For work whose result is optional, such as fetching rows ahead; a panic
/// in it only means no result.
pub fn post(job: impl FnOnce() + Send + 'static) -> Option<Ticket> {
    Some(Ticket { id: shared()?.enqueue(Box::new(job)) })
}

/// Like [`post`], for work that must happen: dropping the [`Owed`] runs `job` on the caller if
/// the helper has not started it, else waits for it to finish. Where there is no helper, `job`
/// runs before this returns (and `None` is returned). For an update whose effect the caller
/// needs later but not now; `job` reports a panic through its own state.
pub fn post_owed(job: impl FnOnce() + Send + 'static) -> Option<Owed> {
    let job: Box<dyn FnOnce() + Send> = Box::new(job);
    let Some(s) = shared() else {
        job();
        return None;
    };
    Some(Owed { id: s.enqueue(job) })
}

impl Shared {
    fn enqueue(&self, job: Box<dyn FnOnce() + Send>) -> u64 {
        let id = {
            let mut p = self.posted.lock().unwrap_or_else(|e| e.into_inner());
            p.last_id += 1;
            let id = p.last_id;
            p.jobs.push_back((id, job));
            id
        };
        // Under the slot's lock, so the first helper cannot check the queue and park in between.
        let first = &self.helpers[0];
        let _slot = first.job.lock().unwrap_or_else(|e| e.into_inner());
        first.nudge();
        id
    }
    /// Waits until job `id` is neither queued nor running; a job still queued is taken out and
    /// returned (not run).
    fn settle(&self, id: u64) -> Option<Box<dyn FnOnce() + Send>> {
        loop {
            let mut p = self.posted.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = p.jobs.iter().position(|j| j.0 == id) {
                return p.jobs.remove(k).map(|j| j.1);
            }
            if p.running != Some(id) {
                return None;
            }
            drop(p);
            std::hint::spin_loop();
        }
    }
}

/// A posted job's claim: dropping it leaves the job either done or never run.
#[must_use = "a posted job may read its inputs until its ticket is dropped"]
pub struct Ticket {
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(s) = shared() {
            drop(s.settle(self.id));
        }
    }
}

/// An owed job's claim ([`post_owed`]): dropping it leaves the job done.
#[must_use = "an owed job may still be running until this is dropped"]
pub struct Owed {
    id: u64,
}

impl Owed {
    /// Whether the thread has yet to start the job; does not wait.
    pub fn is_queued(&self) -> bool {
        let Some(s) = shared() else { return false };
        s.posted.lock().unwrap_or_else(|e| e.into_inner()).jobs.iter().any(|j| j.0 == self.id)
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if let Some(job) = shared().and_then(|s| s.settle(self.id)) {
            job();
        }
    }
}

/// Calls `f(k)` once for every `k` in `0..n`, spread over this thread and up to `n - 1`
/// helpers in claim order: `f` must not depend on which thread runs it (write piece `k`'s
/// output to a place of its own).
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                break;
            }
            f(k);
        }
    };
    share(&work, n.saturating_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_index_runs_once() {
        for round in 0..50 {
            expect_work(Duration::from_millis(5));
            let hits: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
            for_each(hits.len(), |k| {
                hits[k].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
        }
    }

    #[test]
    fn beside_returns_both_results_and_shared_back_work_runs_once() {
        for round in 0..50 {
            expect_work(Duration::from_millis(5));
            let hits: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
            let here_hits = AtomicUsize::new(0);
            let (a, b) = beside(
                || {
                    // On a helper this is shared back to the caller, which joins it.
                    for_each(hits.len(), |k| {
                        hits[k].fetch_add(1, Ordering::Relaxed);
                    });
                    "there"
                },
                || here_hits.fetch_add(1, Ordering::Relaxed),
            );
            assert_eq!((a, b), ("there", 0), "round {round}");
            assert_eq!(here_hits.load(Ordering::Relaxed), 1);
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
        }
        // A panic in shared-back work reaches the caller, and the thread keeps working.
        let r = catch_unwind(|| beside(|| for_each(64, |k| assert!(k != 40, "boom")), || ()));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        for_each(10, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn a_posted_job_has_run_or_never_will_once_its_ticket_is_dropped() {
        use std::sync::Arc;
        let mut ran = 0;
        for round in 0..40 {
            // 0: not started, 1: running, 2: done.
            let state = Arc::new(AtomicUsize::new(0));
            let s = state.clone();
            let ticket = post(move || {
                s.store(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(300));
                s.store(2, Ordering::SeqCst);
            })
            .expect("the thread runs");
            std::thread::sleep(Duration::from_micros(round * 25));
            drop(ticket);
            let seen = state.load(Ordering::SeqCst);
            assert!(seen != 1, "round {round}: dropped while running");
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(state.load(Ordering::SeqCst), seen, "round {round}: ran after its ticket was dropped");
            ran += (seen == 2) as usize;
        }
        assert!(ran > 0, "no posted job ever ran");
    }

    #[test]
    fn an_owed_job_has_run_once_its_claim_is_dropped() {
        use std::sync::Arc;
        for round in 0..40 {
            let runs = Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let owed = post_owed(move || {
                std::thread::sleep(Duration::from_micros(300));
                r.fetch_add(1, Ordering::SeqCst);
            })
            .expect("the thread runs");
            std::thread::sleep(Duration::from_micros(round * 25));
            drop(owed);
            assert_eq!(runs.load(Ordering::SeqCst), 1, "round {round}: not run, or run twice");
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(runs.load(Ordering::SeqCst), 1, "round {round}: run again after its claim was dropped");
        }
    }

    #[test]
    fn a_panic_on_either_thread_reaches_the_caller_and_the_thread_survives() {
        let r = catch_unwind(|| for_each(64, |k| assert!(k != 40, "boom")));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        for_each(10, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 10);
    }
}
