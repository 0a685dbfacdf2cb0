//! Background CPU work that gives way to requests at once.
//!
//! A keys reload (read and hash the file, parse, validate, build: about
//! 20 ms of CPU for 10,000 keys) and the freeing of the snapshot it
//! replaces are background work. At nice 10 alone the scheduler still lets
//! such a thread run on for a while before a request thread that just woke
//! up gets the core, which showed as a doubled request p99 during a rewrite
//! storm on a shared core. A thread of the `SCHED_IDLE` class is preempted
//! as soon as any ordinary thread wants its core, so the work is handed to
//! one such thread. But it only runs when its core is otherwise idle, and an
//! unprivileged process cannot move it back: so [`at_idle`] waits for it to
//! begin at most [`START`] and to finish at most [`GRACE`], then does the
//! same work itself at the caller's priority (the watcher's nice 10). On a
//! core the requests keep busy a reload step is then late by at most
//! [`START`] (or [`GRACE`], when the core got busy after the step began).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a reload step waits for the idle thread to begin its work
/// before doing it itself: an idle-class thread that has not begun within
/// this time is behind requests that keep the core busy.
pub const START: Duration = Duration::from_millis(50);

/// How long a reload step waits in all for the idle thread's result.
pub const GRACE: Duration = Duration::from_millis(150);

/// Jobs waiting for the idle thread; when full, callers do their work
/// themselves.
const QUEUE: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// The one idle-class thread, made on first use; `None` where the class is
/// unavailable or the thread could not be made.
fn worker() -> Option<&'static mpsc::SyncSender<Job>> {
    static WORKER: OnceLock<Option<mpsc::SyncSender<Job>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
            let (entered_tx, entered) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("scopegate idle".into())
                .spawn(move || {
                    let ok = enter_idle_class();
                    let _ = entered_tx.send(ok);
                    if ok {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    }
                });
            match spawned {
                Ok(_) if entered.recv() == Ok(true) => Some(tx),
                _ => None,
            }
        })
        .as_ref()
}

/// Runs `work` on the idle-class thread and returns its result. If that
/// thread has not begun it within `start`, or has not finished it within
/// `grace` (or is unavailable, or already has [`QUEUE`] jobs), `work` runs
/// on the calling thread instead and that result is returned. A job given
/// up on before it began is skipped; one given up on after is finished and
/// its result dropped there.
pub fn at_idle<T, F>(start: Duration, grace: Duration, work: F) -> T
where
    T: Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    const WAITING: u8 = 0;
    const BEGUN: u8 = 1;
    const GIVEN_UP: u8 = 2;
    let work = Arc::new(work);
    if let Some(worker) = worker() {
        let (tx, rx) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(WAITING));
        let (theirs, their_state) = (work.clone(), state.clone());
        let job: Job = Box::new(move || {
            let begin =
                their_state.compare_exchange(WAITING, BEGUN, Ordering::AcqRel, Ordering::Acquire);
            if begin.is_ok() {
                // A closed channel: the caller did the work itself.
                let _ = tx.send(theirs());
            }
        });
        if worker.try_send(job).is_ok() {
            let waited = Instant::now();
            match rx.recv_timeout(start.min(grace)) {
                Ok(value) => return value,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let gave_up = state
                        .compare_exchange(WAITING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    if !gave_up {
                        // Begun: worth the rest of the grace.
                        let rest = grace.saturating_sub(waited.elapsed());
                        if let Ok(value) = rx.recv_timeout(rest) {
                            return value;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
        }
    }
    work()
}

/// Drops `value`, then calls `after`, on the idle-class thread; here, when
/// that thread is unavailable or already has [`QUEUE`] jobs waiting (a
/// saturated core).
pub fn drop_at_idle<T: Send + 'static>(value: T, after: fn()) {
    let job: Job = Box::new(move || {
        drop(value);
        after();
    });
    let here = match worker() {
        Some(worker) => match worker.try_send(job) {
            Ok(()) => return,
            Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) => job,
        },
        None => job,
    };
    here();
}

/// Moves the calling thread to the idle scheduling class; `false` where it
/// could not (then the caller should not count on the work being done).
fn enter_idle_class() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` for the duration of the
        // call; pid 0 is the calling thread. Entering SCHED_IDLE needs no
        // privilege.
        let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        set == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> libc::c_int {
        // SAFETY: a plain query of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_work_runs_on_an_idle_thread_and_the_caller_keeps_its_class() {
        let before = policy_of_this_thread();
        let (policy, name) = at_idle(Duration::from_secs(30), Duration::from_secs(30), || {
            (
                policy_of_this_thread(),
                std::thread::current().name().map(str::to_owned),
            )
        });
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(name.as_deref(), Some("scopegate idle"));
        assert_eq!(policy_of_this_thread(), before, "the caller is not moved");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_late_idle_thread_is_not_waited_for_beyond_the_grace() {
        // The idle thread's run begins but is held back as if its core were
        // saturated; the caller gives up after the grace and does the work.
        let started = Instant::now();
        let policy = at_idle(
            Duration::from_millis(50),
            Duration::from_millis(100),
            || {
                let policy = policy_of_this_thread();
                if policy == libc::SCHED_IDLE {
                    std::thread::sleep(Duration::from_secs(2));
                }
                policy
            },
        );
        let waited = started.elapsed();
        assert_ne!(policy, libc::SCHED_IDLE, "the caller's own run answered");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_job_the_idle_thread_has_not_begun_is_done_by_the_caller_and_skipped() {
        // The idle thread is kept busy, as behind requests on a saturated
        // core: the next job does not begin within `start`.
        let blocker = std::thread::spawn(|| {
            at_idle(Duration::from_secs(30), Duration::from_secs(30), || {
                std::thread::sleep(Duration::from_millis(600));
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let started = Instant::now();
        let policy = at_idle(
            Duration::from_millis(20),
            Duration::from_secs(30),
            move || {
                counted.fetch_add(1, Ordering::AcqRel);
                policy_of_this_thread()
            },
        );
        let waited = started.elapsed();
        assert_ne!(policy, libc::SCHED_IDLE, "the caller's own run answered");
        assert!(
            waited < Duration::from_millis(500),
            "{waited:?}: not the grace"
        );
        blocker.join().expect("blocker");
        // The idle thread reaches the job after the blocker and skips it.
        at_idle(Duration::from_secs(30), Duration::from_secs(30), || ());
        assert_eq!(runs.load(Ordering::Acquire), 1, "run by the caller only");
    }

    #[test]
    fn a_value_dropped_at_idle_is_dropped() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        drop_at_idle(Flag(dropped.clone()), || {});
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dropped.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(dropped.load(Ordering::Acquire));
    }
}
