//! Per-account concurrency limit that adapts to 429s: additive increase after
//! successes, multiplicative decrease on "too many concurrent requests" (AIMD).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug)]
struct LimitState {
    limit: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

/// Never lets more than `max` requests run at once; lowers the limit on 429.
#[derive(Debug, Clone)]
pub struct AimdLimiter {
    state: Arc<Mutex<LimitState>>,
    released: Arc<Notify>,
    max: usize,
}

/// Decreases closer together than this count as one overload signal: the 429s
/// of one burst all answer requests sent under the old limit.
const DECREASE_SPACING: Duration = Duration::from_millis(500);

impl AimdLimiter {
    pub fn new(max: usize) -> Self {
        AimdLimiter {
            state: Arc::new(Mutex::new(LimitState {
                limit: max as f64,
                in_flight: 0,
                last_decrease: None,
            })),
            released: Arc::new(Notify::new()),
            max: max.max(1),
        }
    }

    /// Waits for a slot; the slot is held until the permit is dropped.
    pub async fn acquire(&self) -> Permit {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().expect("limiter lock");
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    return Permit {
                        limiter: self.clone(),
                    };
                }
            }
            notified.await;
        }
    }

    /// A success: grow by about one slot per `limit` successes.
    pub fn on_success(&self) {
        let mut s = self.state.lock().expect("limiter lock");
        let grown = (s.limit + 1.0 / s.limit).min(self.max as f64);
        let opened = grown.floor() > s.limit.floor();
        s.limit = grown;
        drop(s);
        if opened {
            self.released.notify_waiters();
        }
    }

    /// A 429: halve the limit (not below 1).
    pub fn on_overload(&self, now: Instant) {
        let mut s = self.state.lock().expect("limiter lock");
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_SPACING)
        {
            return;
        }
        s.limit = (s.limit / 2.0).max(1.0);
        s.last_decrease = Some(now);
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit.floor() as usize
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().expect("limiter lock").in_flight
    }
}

pub struct Permit {
    limiter: AimdLimiter,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().expect("limiter lock");
        s.in_flight -= 1;
        drop(s);
        self.limiter.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
