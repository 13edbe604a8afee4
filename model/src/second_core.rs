//! A second thread for memory-bound kernels. A large table's row update waits on DRAM; two cores
//! keep twice the cache misses in flight. Spawning a thread for it each step costs 80–200 µs on
//! the 2-core VM this was measured on (as much as the split saves), so one thread is kept. Each
//! step's start wakes it ([`expect_work`]); it then spins (politely, yielding) until a few
//! milliseconds have passed or a millisecond after its last job, so it is already running when the
//! gather or the update shares its rows with it ([`for_each`]). While steps keep coming it thus
//! stays busy on the second core; it parks within milliseconds once they stop (evaluation, I/O).
//!
//! [`beside`] starts one piece of work on the thread while the caller does another; what that
//! piece shares ([`for_each`]) the caller joins as soon as its own piece is done. The step uses it
//! to start the item table's update while the head and the user table are updated. [`post`]
//! queues a job nobody waits for until its ticket is dropped: the step uses it to copy the next
//! batch's rows of that table, and read this batch's, while the forward and backward passes run.
//! [`post_owed`] queues one that must run: a large item table's update, left running into the
//! next step (`rows::Pipeline`), and the training loop's next batch (`rows::later`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the thread keeps spinning after a job before it parks.
const LINGER: Duration = Duration::from_millis(1);

/// A job on the caller's stack; valid until the caller has seen `done` (see [`share`]).
type JobRef = &'static (dyn Fn() + Sync);

struct Shared {
    job: Mutex<Option<JobRef>>,
    wake: Condvar,
    done: AtomicBool,
    panicked: AtomicBool,
    /// Nanoseconds since `epoch` until which the thread spins instead of parking.
    spin_until: AtomicU64,
    epoch: Instant,
    /// One caller at a time; others run their second half themselves.
    busy: Mutex<()>,
    /// Work the thread shares back while running a [`beside`] job (a [`share`] made on the
    /// thread itself): the caller joins it once its own half is done.
    help: Mutex<Option<JobRef>>,
    /// How many runs of the `help` job are under way on the caller's thread.
    helping: AtomicUsize,
    /// Jobs run in the order posted ([`post`], [`post_owed`]).
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
    /// Whether this is the second thread.
    static SECOND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn worker(&self) {
        loop {
            let job = {
                let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = slot.take() {
                        break job;
                    }
                    let posted = {
                        let mut p = self.posted.lock().unwrap_or_else(|e| e.into_inner());
                        let job = p.jobs.pop_front();
                        p.running = job.as_ref().map(|j| j.0);
                        job
                    };
                    if let Some((_, posted)) = posted {
                        drop(slot);
                        // Its ticket's owner waits for it and cannot be told of a panic here: a
                        // posted job reports through its own state (see `post`, `post_owed`).
                        let _ = catch_unwind(AssertUnwindSafe(posted));
                        self.posted.lock().unwrap_or_else(|e| e.into_inner()).running = None;
                        slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    if self.now() < self.spin_until.load(Ordering::Acquire) {
                        drop(slot);
                        // Polite spinning: burn's pool or another process may want this core.
                        std::thread::yield_now();
                        slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                    } else {
                        slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                }
            };
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            // Stay awake a little for the next hand-over (the next step's gather follows this
            // step's update within microseconds); park after that.
            self.spin_until.fetch_max(self.now() + LINGER.as_nanos() as u64, Ordering::AcqRel);
            self.done.store(true, Ordering::Release);
        }
    }
}

/// The thread, started on first use; `None` if it could not be spawned.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *SHARED.get_or_init(|| {
        // `--threads 1`: no second thread; its jobs run on the caller, in the same order.
        if rayon::current_num_threads() < 2 {
            return None;
        }
        let s: &'static Shared = Box::leak(Box::new(Shared {
            job: Mutex::new(None),
            wake: Condvar::new(),
            done: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            spin_until: AtomicU64::new(0),
            epoch: Instant::now(),
            busy: Mutex::new(()),
            help: Mutex::new(None),
            helping: AtomicUsize::new(0),
            posted: Mutex::new(PostedSlot::default()),
        }));
        let run = move || {
            SECOND.with(|c| c.set(true));
            s.worker()
        };
        std::thread::Builder::new().name("ncf-rows".into()).spawn(run).ok().map(|_| s)
    })
}

/// Asks the thread to be awake for the next `within`: call it well before a [`share`] so the
/// wake-up overlaps other work.
pub fn expect_work(within: Duration) {
    if let Some(s) = shared() {
        s.spin_until.fetch_max(s.now() + within.as_nanos() as u64, Ordering::AcqRel);
        s.wake.notify_one();
    }
}

/// Runs `work` here and, at the same time, on the other thread; returns once this thread's call
/// has returned and the other thread's has too, or never started (taken back: a descheduled
/// helper never holds the caller up). `work` must split its work with the other call through
/// shared state (e.g. an atomic cursor over chunks); each call should run until none is left.
/// A panic on the second thread is raised here.
///
/// Called on the second thread itself (inside a [`beside`] job), the other thread is the one
/// that called `beside`, which joins `work` once its own half is done.
pub fn share(work: &(dyn Fn() + Sync)) {
    let Some(s) = shared() else { return work() };
    if SECOND.with(|c| c.get()) {
        return s.share_back(work);
    }
    with_helper(work, work);
}

/// Runs `there` on the second thread while `here` runs on this one, and returns both results;
/// `there` runs here if the thread has not started it by the time `here` is done. Work that
/// `there` shares ([`share`], [`for_each`]) is joined by this thread after `here`. For unequal
/// pieces of work that may run at once, such as updating two tables.
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
    let b = with_helper(&run, here);
    run();
    let a = out.into_inner().unwrap_or_else(|e| e.into_inner()).expect("`there` ran on one of the threads");
    (a, b)
}

impl Shared {
    /// [`share`] on the second thread: offers `work` to the thread waiting in [`with_helper`].
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

    /// Runs the work the second thread shares back, if any, once.
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
        // Raised by `with_helper` once the second thread is done with the caller's stack.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            self.panicked.store(true, Ordering::Release);
        }
    }
}

/// `job`, which borrows from the caller, as 'static, to cross to the other thread.
///
/// # Safety
/// The caller must not return or unwind before the other thread's last use of it.
unsafe fn erase(job: &(dyn Fn() + Sync)) -> JobRef {
    // SAFETY: only the lifetime changes; the caller keeps the borrow alive (see above).
    unsafe { std::mem::transmute::<&(dyn Fn() + Sync), JobRef>(job) }
}

/// Hands `job` to the second thread, runs `here` on this one, then takes `job` back if the
/// thread has not started it, or joins what it shares back and waits until it has finished.
fn with_helper<R>(job: &(dyn Fn() + Sync), here: impl FnOnce() -> R) -> R {
    let Some(s) = shared() else { return here() };
    let Ok(_busy) = s.busy.try_lock() else { return here() };
    // SAFETY: this function does not return or unwind past `Wait` before the thread either
    // never took the job (taken back below) or has set `done` after its last use of it.
    let job = unsafe { erase(job) };
    s.done.store(false, Ordering::Release);
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
    s.wake.notify_one();

    /// Takes the job back if the thread has not started it, else waits for it; also on unwind.
    struct Wait(&'static Shared);
    impl Drop for Wait {
        fn drop(&mut self) {
            if self.0.job.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
                return;
            }
            while !self.0.done.load(Ordering::Acquire) {
                self.0.join_help();
                std::hint::spin_loop();
            }
        }
    }
    let wait = Wait(s);
    let r = here();
    drop(wait);
    if s.panicked.swap(false, Ordering::AcqRel) {
        panic!("the second row-kernel thread panicked");
    }
    r
}

/// Hands `job` to the second thread to run after the jobs posted before it, and returns at once;
/// `None` (and `job` not run) where there is no thread. The caller must drop the [`Ticket`] before
/// anything `job` reads may change or go away: that waits if it is running and cancels it if it
/// has not started. For work whose result is optional, such as fetching rows ahead; a panic in it
/// only means no result.
pub fn post(job: impl FnOnce() + Send + 'static) -> Option<Ticket> {
    Some(Ticket { id: shared()?.enqueue(Box::new(job)) })
}

/// Like [`post`], for work that must happen: dropping the [`Owed`] runs `job` on the caller if
/// the thread has not started it, else waits for it to finish. Where there is no thread, `job`
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
        // Under the job lock, so the thread cannot check the queue and park in between.
        let _slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_one();
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

/// Calls `f(k)` once for every `k` in `0..n`, spread over this thread and the second one in
/// claim order.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    share(&|| {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                break;
            }
            f(k);
        }
    });
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
                    // On the second thread this is shared back to the caller, which joins it.
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
