//! A second thread for memory-bound kernels. A large table's row update waits on DRAM; two cores
//! keep twice the cache misses in flight. Spawning a thread for it each step costs 80–200 µs on
//! the 2-core VM this was measured on (as much as the split saves), so one thread is kept: parked
//! between steps, woken at a step's start ([`expect_work`]) so that it is already running when the
//! update hands it half of the rows ([`join`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A job on the caller's stack; valid until the caller has seen `done` (see [`join`]).
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
                    if self.now() < self.spin_until.load(Ordering::Acquire) {
                        drop(slot);
                        // Polite spinning: the batch thread and burn's pool may want this core.
                        std::thread::yield_now();
                        slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                    } else {
                        slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    }
                }
            };
            // The job is taken: park again after it unless the next step asks.
            self.spin_until.store(0, Ordering::Release);
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.store(true, Ordering::Release);
        }
    }
}

/// The thread, started on first use; `None` if it could not be spawned.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *SHARED.get_or_init(|| {
        let s: &'static Shared = Box::leak(Box::new(Shared {
            job: Mutex::new(None),
            wake: Condvar::new(),
            done: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            spin_until: AtomicU64::new(0),
            epoch: Instant::now(),
            busy: Mutex::new(()),
        }));
        std::thread::Builder::new().name("ncf-rows".into()).spawn(move || s.worker()).ok().map(|_| s)
    })
}

/// Asks the thread to be awake for the next `within`: call it well before a [`join`] so the
/// wake-up overlaps other work.
pub fn expect_work(within: Duration) {
    if let Some(s) = shared() {
        s.spin_until.store(s.now() + within.as_nanos() as u64, Ordering::Release);
        s.wake.notify_one();
    }
}

/// Runs `mine` here and `theirs` on the second thread, returning when both are done (a panic in
/// either is raised here). Runs both here, one after the other, when the thread is in use by
/// another caller or could not be started.
pub fn join(mine: impl FnOnce(), theirs: impl FnOnce() + Send) {
    let Some(s) = shared() else {
        mine();
        return theirs();
    };
    let Ok(_busy) = s.busy.try_lock() else {
        mine();
        return theirs();
    };
    let cell = Mutex::new(Some(theirs));
    let call = move || {
        if let Some(f) = cell.lock().unwrap_or_else(|e| e.into_inner()).take() {
            f()
        }
    };
    let job: &(dyn Fn() + Sync) = &call;
    // SAFETY: `job` borrows from this frame. It is erased to 'static only to cross to the thread,
    // and this function does not return or unwind past `Wait` before the thread has set `done`
    // after its last use of `job`.
    let job: JobRef = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), JobRef>(job) };
    s.done.store(false, Ordering::Release);
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
    s.wake.notify_one();

    /// Waits for the thread's half, also when `mine` unwinds.
    struct Wait(&'static Shared);
    impl Drop for Wait {
        fn drop(&mut self) {
            while !self.0.done.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
    }
    let wait = Wait(s);
    mine();
    drop(wait);
    if s.panicked.swap(false, Ordering::AcqRel) {
        panic!("the second row-update thread panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_and_see_their_borrows() {
        let mut a = vec![0u32; 1000];
        let mut b = vec![0u32; 1000];
        for round in 1..=50u32 {
            expect_work(Duration::from_millis(5));
            join(|| a.iter_mut().for_each(|x| *x += round), || b.iter_mut().for_each(|x| *x += 2 * round));
        }
        let sum: u32 = (1..=50).sum();
        assert!(a.iter().all(|&x| x == sum) && b.iter().all(|&x| x == 2 * sum));
    }

    #[test]
    fn a_panic_on_the_thread_reaches_the_caller_and_the_thread_survives() {
        // Other tests may hold the thread: then both halves run here and the panic is direct.
        let r = catch_unwind(|| join(|| (), || panic!("boom")));
        assert!(r.is_err());
        let mut x = 0;
        join(|| (), || x += 1);
        assert_eq!(x, 1);
    }
}
