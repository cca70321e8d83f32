//! What changes under a running dispatcher: each account's concurrency
//! ceiling, which follows this replica's share of the account's budget, and
//! the passcode, which a reload replaces.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::RegionAccount;
use crate::domain::ids::RegionName;
use crate::domain::secret::Secret;
use crate::domain::share::replica_share;

use super::{AccountLane, Dispatcher};

impl Dispatcher {
    /// From now on each region's concurrency follows this replica's share
    /// of `budgets` (`regions.NAME.account_concurrency`; see
    /// [`replica_share`]), capped by `api.max_concurrency`. Until
    /// [`Dispatcher::set_partitions`] says otherwise it owns nothing.
    pub fn share_budgets(&self, budgets: &[(RegionName, usize)]) {
        for (region, budget) in budgets {
            if let Some(lane) = self.inner.lanes.get(region) {
                lane.budget.store(*budget, Ordering::Relaxed);
            }
        }
        self.set_partitions(0, None);
    }

    /// The consumer group's assignment changed: this replica owns `owned`
    /// of the `total` partitions of its topics (`None`: not known yet).
    /// Sets each region's share and its limiter's ceiling.
    pub fn set_partitions(&self, owned: usize, total: Option<usize>) {
        let max_concurrency = self.inner.settings.max_concurrency;
        for lane in self.inner.lanes.values() {
            let region = lane.name.as_str();
            let budget = lane.budget.load(Ordering::Relaxed);
            let share = replica_share(budget, owned, total);
            // Nothing owned: one slot, for what revoked partitions left.
            let ceiling = share.clamp(1, max_concurrency);
            let before = lane.limiter.max();
            lane.limiter.set_max(ceiling);
            self.inner
                .metrics
                .account_concurrency_share
                .with_label_values(&[region])
                .set(share as i64);
            self.inner.note_limit(lane);
            if before != ceiling {
                tracing::info!(
                    region,
                    budget,
                    owned_partitions = owned,
                    total_partitions = total,
                    share,
                    max_concurrency,
                    "account concurrency share: {ceiling} request(s) at once"
                );
            }
        }
    }

    /// Whether every region's requests in flight fit its current ceiling:
    /// after a share was lowered, the requests started under the old one
    /// may still be running.
    pub fn fits_shares(&self) -> bool {
        self.inner
            .lanes
            .values()
            .all(|lane| lane.limiter.in_flight() <= lane.limiter.max())
    }

    /// A region's passcode was reloaded: new requests use it, requests in
    /// flight finish with the old one, and a held region probes at once.
    /// False for an unknown region.
    pub fn set_passcode(&self, region: &RegionName, passcode: Secret) -> bool {
        let Some(lane) = self.inner.lanes.get(region) else {
            return false;
        };
        let generation = {
            let mut account = lane.account.write().expect("account lock");
            let mut changed = RegionAccount::clone(&account.1);
            changed.passcode = passcode;
            *account = (account.0 + 1, Arc::new(changed));
            account.0
        };
        lane.credentials.send_replace(generation);
        true
    }
}

impl AccountLane {
    /// The passcode generation and the account to send the next request with.
    pub(super) fn account(&self) -> (u64, Arc<RegionAccount>) {
        let account = self.account.read().expect("account lock");
        (account.0, account.1.clone())
    }
}
