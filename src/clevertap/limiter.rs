//! Per-account concurrency limit that adapts to 429s: additive increase after
//! successes, multiplicative decrease on "too many concurrent requests" (AIMD),
//! under a ceiling that follows this replica's share of the account's budget
//! (see [`crate::domain::share::replica_share`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct LimitState {
    limit: f64,
    /// Permits to withhold when they come back (the limit was lowered while
    /// they were in use).
    debt: usize,
    last_decrease: Option<Instant>,
    /// The ceiling: AIMD never grows the limit above it.
    max: usize,
}

/// Never lets more than `max` requests run at once; lowers the limit on 429.
/// A FIFO semaphore holds the permits, so waiting requests are served in
/// order and one release wakes one waiter.
#[derive(Debug, Clone)]
pub struct AimdLimiter {
    permits: Arc<Semaphore>,
    state: Arc<Mutex<LimitState>>,
    in_flight: Arc<AtomicUsize>,
}

/// Decreases closer together than this count as one overload signal: the 429s
/// of one burst all answer requests sent under the old limit.
const DECREASE_SPACING: Duration = Duration::from_millis(500);

impl AimdLimiter {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        AimdLimiter {
            permits: Arc::new(Semaphore::new(max)),
            state: Arc::new(Mutex::new(LimitState {
                limit: max as f64,
                debt: 0,
                last_decrease: None,
                max,
            })),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a slot; the slot is held until the permit is dropped.
    pub async fn acquire(&self) -> Permit {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            permit: Some(permit),
            limiter: self.clone(),
        }
    }

    /// A success: grow by about one slot per `limit` successes.
    pub fn on_success(&self) {
        let mut s = self.state.lock().expect("limiter lock");
        let grown = (s.limit + 1.0 / s.limit).min(s.max as f64);
        if grown.floor() > s.limit.floor() {
            if s.debt > 0 {
                s.debt -= 1;
            } else {
                self.permits.add_permits(1);
            }
        }
        s.limit = grown;
    }

    /// A 429: halve the limit (not below 1).
    pub fn on_overload(&self, now: Instant) {
        let mut s = self.state.lock().expect("limiter lock");
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_SPACING)
        {
            return;
        }
        let lowered = (s.limit / 2.0).max(1.0);
        self.resize(&mut s, lowered);
        s.last_decrease = Some(now);
    }

    /// Moves the ceiling (this replica's share changed). Raising it raises
    /// the limit by as much, keeping any deficit 429s caused; lowering it
    /// caps the limit at once. Requests already in flight above a lowered
    /// limit finish; new ones wait until the count is below it.
    pub fn set_max(&self, max: usize) {
        let max = max.max(1);
        let mut s = self.state.lock().expect("limiter lock");
        if max == s.max {
            return;
        }
        let limit = if max > s.max {
            s.limit + (max - s.max) as f64
        } else {
            s.limit
        }
        .min(max as f64);
        s.max = max;
        self.resize(&mut s, limit);
    }

    /// Sets the limit, handing out or withholding the permits it changes.
    fn resize(&self, s: &mut LimitState, limit: f64) {
        let (old, new) = (s.limit.floor() as usize, limit.floor() as usize);
        if new > old {
            let add = new - old;
            let repaid = add.min(s.debt);
            s.debt -= repaid;
            self.permits.add_permits(add - repaid);
        } else if new < old {
            let remove = old - new;
            let forgotten = self.permits.forget_permits(remove);
            s.debt += remove - forgotten;
        }
        s.limit = limit;
    }

    /// The ceiling the limit grows back to.
    pub fn max(&self) -> usize {
        self.state.lock().expect("limiter lock").max
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit.floor() as usize
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    limiter: AimdLimiter,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.limiter.state.lock().expect("limiter lock");
        if let Some(permit) = self.permit.take() {
            if s.debt > 0 {
                s.debt -= 1;
                permit.forget();
            }
            // Otherwise dropping the permit returns it to the semaphore.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn the_ceiling_moves_with_the_share() {
        let l = AimdLimiter::new(1);
        l.set_max(4);
        assert_eq!((l.limit(), l.max()), (4, 4), "raised at once");
        let held: Vec<Permit> = futures::future::join_all((0..4).map(|_| l.acquire())).await;
        l.set_max(2);
        assert_eq!(l.limit(), 2);
        drop(held);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "only 2 slots after lowering the ceiling");
        drop(a);
        // A 429 deficit survives a raise: 2 -> 1 by the 429, then + 4.
        l.on_overload(Instant::now());
        assert_eq!(l.limit(), 1);
        l.set_max(6);
        assert_eq!((l.limit(), l.max()), (5, 6));
        for _ in 0..100 {
            l.on_success();
        }
        assert_eq!(l.limit(), 6, "AIMD grows back up to the new ceiling only");
    }

    #[tokio::test]
    async fn never_more_than_the_limit_at_once() {
        let limiter = AimdLimiter::new(3);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (l, now, peak) = (limiter.clone(), now.clone(), peak.clone());
                tokio::spawn(async move {
                    let _p = l.acquire().await;
                    let c = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(c, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn halves_on_overload_and_grows_back_slowly() {
        let l = AimdLimiter::new(10);
        let t0 = Instant::now();
        l.on_overload(t0);
        assert_eq!(l.limit(), 5);
        l.on_overload(t0 + Duration::from_millis(100)); // same burst
        assert_eq!(l.limit(), 5);
        l.on_overload(t0 + Duration::from_secs(1));
        assert_eq!(l.limit(), 2);
        for _ in 0..3 {
            l.on_overload(t0 + Duration::from_secs(10));
        }
        l.on_overload(t0 + Duration::from_secs(20));
        assert_eq!(l.limit(), 1, "never below one");
        let mut successes = 0;
        while l.limit() < 10 {
            l.on_success();
            successes += 1;
        }
        assert!(successes > 30, "additive increase is gradual: {successes}");
        for _ in 0..100 {
            l.on_success();
        }
        assert_eq!(l.limit(), 10, "never above the configured maximum");
    }

    #[tokio::test]
    async fn lowering_while_requests_run_takes_effect_as_they_finish() {
        let l = AimdLimiter::new(4);
        let held: Vec<Permit> = futures::future::join_all((0..4).map(|_| l.acquire())).await;
        l.on_overload(Instant::now());
        assert_eq!(l.limit(), 2);
        drop(held);
        let a = l.acquire().await;
        let b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "only 2 slots after the decrease");
        drop((a, b));
        // Growing back returns slots.
        for _ in 0..20 {
            l.on_success();
        }
        let now: Vec<Permit> = futures::future::join_all((0..4).map(|_| l.acquire())).await;
        assert_eq!(now.len(), 4);
        assert_eq!(l.in_flight(), 4);
    }

    #[tokio::test]
    async fn a_lowered_limit_holds_new_requests_back() {
        let l = AimdLimiter::new(4);
        l.on_overload(Instant::now());
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(blocked.is_err(), "limit is 2");
        drop(a);
        let got = tokio::time::timeout(Duration::from_millis(500), l.acquire()).await;
        assert!(got.is_ok());
    }
}
