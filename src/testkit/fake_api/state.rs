//! The state every clone of the fake shares: accounts and their in-flight
//! counts, settings changed at runtime, injected ids, and the records kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::ids::IdKind;
use crate::testkit::fake_api::faults::{Faults, OddAnswer};
use crate::testkit::fake_api::records::{DeletionKey, Log, Record};
use crate::testkit::fake_api::reply::Reply;

pub(super) struct AccountState {
    pub(super) passcode: Mutex<String>,
    pub(super) in_progress: AtomicUsize,
    pub(super) peak: AtomicUsize,
}

/// Decrements the account's in-progress count however the request ends
/// (answered, hung then cancelled, client gone).
pub(super) struct InFlight(Arc<AccountState>);

impl InFlight {
    /// Counts the request in; returns the guard and the count including it.
    pub(super) fn enter(account: Arc<AccountState>) -> (InFlight, usize) {
        let now = account.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        account.peak.fetch_max(now, Ordering::SeqCst);
        (InFlight(account), now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) struct Inner {
    pub(super) accounts: Mutex<HashMap<String, Arc<AccountState>>>,
    pub(super) max_concurrency: AtomicUsize,
    pub(super) latency_nanos: AtomicU64,
    pub(super) faults: Mutex<Faults>,
    pub(super) failing: Mutex<HashMap<String, u16>>,
    pub(super) rejected: Mutex<HashSet<String>>,
    pub(super) odd: Mutex<HashMap<String, OddAnswer>>,
    /// Times deleted, and when the first request that deleted it arrived.
    pub(super) deletions: Mutex<HashMap<DeletionKey, (u32, Instant)>>,
    pub(super) deleted_total: AtomicU64,
    pub(super) log: Mutex<Log>,
    pub(super) request_count: AtomicU64,
    pub(super) violations: Mutex<Vec<String>>,
    pub(super) shutdown: watch::Sender<bool>,
}

/// Poisoning cannot leave these maps inconsistent (no critical section panics
/// half-way), and the fake must never panic, so a poisoned lock is just used.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn new_account(passcode: &str) -> Arc<AccountState> {
    Arc::new(AccountState {
        passcode: Mutex::new(passcode.to_owned()),
        in_progress: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    })
}

impl Inner {
    pub(super) fn account(&self, account_id: &str) -> Option<Arc<AccountState>> {
        lock(&self.accounts).get(account_id).cloned()
    }

    pub(super) fn violation(&self, account: &str, message: &str) {
        tracing::debug!(account, message, "fake CleverTap: contract violation");
        lock(&self.violations).push(format!("{account}: {message}"));
    }

    /// Counts each id deleted by a request that arrived at `received`.
    pub(super) fn record_deletions(
        &self,
        account: &Arc<str>,
        kind: IdKind,
        ids: Vec<String>,
        received: Instant,
    ) {
        let n = ids.len() as u64;
        {
            let mut deletions = lock(&self.deletions);
            for id in ids {
                deletions
                    .entry((account.clone(), kind, id))
                    .or_insert((0, received))
                    .0 += 1;
            }
        }
        self.deleted_total.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn record_answer(&self, account: Arc<str>, reply: &Reply) {
        let status = reply.status.as_u16();
        {
            let mut log = lock(&self.log);
            log.requests.push(Record {
                account,
                status,
                kind: reply.kind,
                ids: reply.ids,
            });
            *log.statuses.entry(status).or_insert(0) += 1;
        }
        self.request_count.fetch_add(1, Ordering::Relaxed);
    }
}
