//! Keeping rayon's other workers awake through a burst of short parallel ops.
//!
//! A training step on the CPU is a few hundred parallel phases (each matrix product split
//! across the pool, each row kernel split by rows) with serial work between them: the
//! autodiff graph, allocation, small ops. A rayon worker that finds no work yields a few dozen
//! times and then sleeps on a futex, and the next phase must wake it with a system call, which
//! on a virtual machine costs an inter-processor interrupt and the wakee's start-up latency.
//! OpenMP runtimes avoid this by spinning between parallel regions; [`KeepWarm`] does the same
//! for rayon for the length of one guard: the pool's other workers run a loop that takes any
//! job the moment it is pushed (`rayon::yield_now`) and never sleeps until the guard drops.
//!
//! It only acts when called from a worker of a pool with more than one thread (as `xtask`
//! runs its commands): called from outside the pool, spinning workers would take the cores
//! the calling thread needs for the serial work. A worker that finds nothing to do for
//! [`MAX_IDLE`] stops spinning on its own, so a guard that is held across something long and
//! serial (an evaluation, a checkpoint write) costs at most that much spinning.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a spinning worker may find no job before it goes back to rayon's own idle loop
/// (yield, then sleep) until the next guard.
pub const MAX_IDLE: Duration = Duration::from_millis(2);

/// While alive, the current rayon pool's other workers wait for work by spinning instead of
/// sleeping. See the [module docs](self) for when that pays and when it does nothing.
#[derive(Debug)]
#[must_use = "the workers stop spinning when the guard is dropped"]
pub struct KeepWarm {
    /// Set on drop; the spinning workers watch it. `None` for a guard that does nothing (off
    /// the pool, one thread, or inside another guard on this thread).
    stop: Option<Arc<AtomicBool>>,
    /// The guard is dropped on the thread that made it, which holds the nesting flag.
    _not_send: PhantomData<*const ()>,
}

thread_local! {
    /// Whether a [`KeepWarm`] made on this thread is alive: a guard inside it (an attention
    /// layer's inside a training step's) does nothing.
    static WARM: Cell<bool> = const { Cell::new(false) };
}

impl KeepWarm {
    /// Starts the spinning on every other worker of the current pool, if the caller is one of
    /// its workers, the pool has more than one thread and no guard of this thread is alive;
    /// otherwise a guard that does nothing.
    pub fn start() -> Self {
        let inert = KeepWarm {
            stop: None,
            _not_send: PhantomData,
        };
        let Some(owner) = rayon::current_thread_index() else {
            return inert;
        };
        if rayon::current_num_threads() < 2 || WARM.with(Cell::get) {
            return inert;
        }
        WARM.with(|w| w.set(true));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        rayon::spawn_broadcast(move |ctx| {
            // The caller's own copy runs whenever it next waits for a job; it must not spin
            // there, on top of the frame that would drop the guard.
            if ctx.index() != owner {
                let _ = spin(&flag);
            }
        });
        KeepWarm {
            stop: Some(stop),
            _not_send: PhantomData,
        }
    }

    /// Whether this guard set workers spinning (false for the guards that do nothing).
    pub fn is_active(&self) -> bool {
        self.stop.is_some()
    }
}

impl Drop for KeepWarm {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Release);
            WARM.with(|w| w.set(false));
        }
    }
}

/// Why [`spin`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The guard dropped.
    Released,
    /// No job appeared for [`MAX_IDLE`].
    Idle,
    /// Not on a rayon worker.
    OffPool,
}

/// Runs pool jobs as they appear until `stop` is set or none has appeared for [`MAX_IDLE`].
fn spin(stop: &AtomicBool) -> Stopped {
    let mut idle_since: Option<Instant> = None;
    let mut polls = 0u32;
    while !stop.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            Some(rayon::Yield::Idle) => {
                polls = polls.wrapping_add(1);
                // Reading the clock on every empty poll would cost more than the poll.
                if polls.is_multiple_of(64) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= MAX_IDLE {
                        return Stopped::Idle;
                    }
                }
                std::hint::spin_loop();
            }
            None => return Stopped::OffPool,
        }
    }
    Stopped::Released
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
    }

    /// Under the guard, parallel work still runs and gives the serial result, and afterwards
    /// the pool still runs a `broadcast` on every worker. (A spinning worker would run that
    /// broadcast too, so this does not show that the spin loops ended; the next test checks
    /// that the loop returns once released.)
    #[test]
    fn work_runs_under_the_guard_and_the_pool_serves_every_worker_after() {
        let pool = pool(3);
        pool.install(|| {
            let sum: u64 = {
                let _warm = KeepWarm::start();
                (0..200u64)
                    .map(|round| {
                        (0..64u64)
                            .into_par_iter()
                            .map(|i| std::hint::black_box(i * round))
                            .sum::<u64>()
                    })
                    .sum()
            };
            assert_eq!(sum, (0..200u64).map(|r| r * 63 * 64 / 2).sum::<u64>());
            assert_eq!(rayon::broadcast(|ctx| ctx.index()), vec![0, 1, 2]);
        });
    }

    /// The spin loop runs a job pushed while it waits, stops by itself when nothing comes,
    /// stops at once when released, and does nothing off the pool.
    #[test]
    fn the_spin_loop_runs_jobs_and_stops_idle_released_or_off_the_pool() {
        // One worker, so the pushed job can only run inside the spin loop.
        let pool = pool(1);
        let ran = Arc::new(AtomicBool::new(false));
        let stopped = pool.install(|| {
            let flag = AtomicBool::new(false);
            let ran = Arc::clone(&ran);
            rayon::spawn(move || ran.store(true, Ordering::Release));
            spin(&flag)
        });
        assert_eq!(stopped, Stopped::Idle);
        assert!(ran.load(Ordering::Acquire), "the pushed job did not run");
        let released = AtomicBool::new(true);
        assert_eq!(pool.install(|| spin(&released)), Stopped::Released);
        assert_eq!(spin(&AtomicBool::new(false)), Stopped::OffPool);
    }

    /// Outside a pool, on a one-thread pool, or inside another guard of the same thread, the
    /// guard does nothing; once the outer guard drops, a new one acts again.
    #[test]
    fn the_guard_is_inert_off_the_pool_on_one_thread_and_nested() {
        assert!(!KeepWarm::start().is_active());
        pool(1).install(|| {
            let warm = KeepWarm::start();
            assert!(!warm.is_active());
            assert_eq!(rayon::broadcast(|ctx| ctx.index()), vec![0]);
        });
        pool(2).install(|| {
            let outer = KeepWarm::start();
            assert!(outer.is_active());
            assert!(!KeepWarm::start().is_active());
            drop(outer);
            assert!(KeepWarm::start().is_active());
        });
    }
}
