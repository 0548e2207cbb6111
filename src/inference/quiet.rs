//! Polling instead of parking while the server is quiet.
//!
//! A call crosses two threads: the HTTP worker hands the job to the model's worker thread and
//! waits for the answer. A parked thread costs its waker a system call and itself a wake-up
//! on another core: on a virtual machine that is tens of microseconds, more than a small model
//! takes to run, and at one call at a time it is most of what the hop costs. So while calls
//! come one at a time, each side polls for the other for a bounded time before parking.
//!
//! Under load the cores belong to the calls: a polling thread would take one from them. A
//! count of calls in progress alone does not tell load (under load many requests are between
//! calls, in sockets and parsers), so any two calls that overlap mark the server busy for a
//! while, and nothing polls until that has passed.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long one overlap of two calls keeps the server from polling.
const BUSY_FOR: Duration = Duration::from_millis(50);

static CALLS: Calls = Calls::new();
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_micros() as u64
}

struct Calls {
    in_progress: AtomicUsize,
    /// Microseconds since `EPOCH` until which the server counts as busy.
    busy_until: AtomicU64,
}

impl Calls {
    const fn new() -> Self {
        Self { in_progress: AtomicUsize::new(0), busy_until: AtomicU64::new(0) }
    }

    fn enter(&self) {
        if self.in_progress.fetch_add(1, Ordering::Relaxed) > 0 {
            self.busy_until.store(micros_since_epoch(Instant::now() + BUSY_FOR), Ordering::Relaxed);
        }
    }

    fn leave(&self) {
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    fn quiet(&self, now: Instant) -> bool {
        self.in_progress.load(Ordering::Relaxed) <= 1 && micros_since_epoch(now) >= self.busy_until.load(Ordering::Relaxed)
    }

    fn poll<T>(&self, budget: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
        // Under load this is the common answer: decide it before reading the clock.
        if self.in_progress.load(Ordering::Relaxed) > 1 {
            return None;
        }
        let started = Instant::now();
        if !self.quiet(started) {
            return None;
        }
        let until = started + budget;
        loop {
            if let Some(value) = attempt() {
                return Some(value);
            }
            for _ in 0..32 {
                std::hint::spin_loop();
            }
            let now = Instant::now();
            if now >= until || !self.quiet(now) {
                return None;
            }
        }
    }
}

/// Counts one inference call as in progress for as long as it lives.
pub struct CallInProgress(());

impl CallInProgress {
    pub fn enter() -> Self {
        CALLS.enter();
        Self(())
    }
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        CALLS.leave();
    }
}

/// Retries `attempt` while calls come one at a time, for at most `budget`. `None` when it gave
/// up: the caller then parks as usual.
pub fn poll<T>(budget: Duration, attempt: impl FnMut() -> Option<T>) -> Option<T> {
    CALLS.poll(budget, attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_the_value_comes_and_never_past_its_budget() {
        let calls = Calls::new();
        calls.enter();
        let mut tries = 0;
        let value = calls.poll(Duration::from_secs(1), || {
            tries += 1;
            (tries == 3).then_some(7)
        });
        assert_eq!(value, Some(7));
        let started = Instant::now();
        assert_eq!(calls.poll(Duration::from_millis(2), || None::<()>), None);
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn overlapping_calls_stop_polling_for_a_while_after_they_end() {
        let calls = Calls::new();
        calls.enter();
        calls.enter();
        let tries = std::cell::Cell::new(0);
        let attempt = || {
            tries.set(tries.get() + 1);
            None::<()>
        };
        assert_eq!(calls.poll(Duration::from_secs(1), attempt), None, "two calls in progress");
        calls.leave();
        assert_eq!(calls.poll(Duration::from_secs(1), attempt), None, "busy just after an overlap");
        assert_eq!(tries.get(), 0);
        std::thread::sleep(BUSY_FOR + Duration::from_millis(10));
        assert_eq!(calls.poll(Duration::from_millis(1), attempt), None);
        assert!(tries.get() > 0, "quiet again once the overlap is over");
    }
}
