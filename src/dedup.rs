//! A bounded, time-limited memory of ids CleverTap confirmed deleted, so that
//! repeats finish at once. Only confirmed successes are ever remembered.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::ids::{IdKind, RegionName};

/// One deletion: an id of a kind in a region's account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeletionKey {
    pub region: RegionName,
    pub kind: IdKind,
    pub id: Arc<str>,
}

pub struct RecentlyDeleted {
    entries: LruCache<DeletionKey, Instant, foldhash::fast::RandomState>,
    ttl: Duration,
}

impl RecentlyDeleted {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        RecentlyDeleted {
            entries: LruCache::with_hasher(
                NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
                foldhash::fast::RandomState::default(),
            ),
            ttl,
        }
    }

    /// Remember a deletion CleverTap answered success for.
    pub fn remember(&mut self, key: DeletionKey, now: Instant) {
        self.entries.put(key, now);
    }

    /// True when the id was deleted within the time limit.
    pub fn contains(&mut self, key: &DeletionKey, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(&at) if now.duration_since(at) < self.ttl => true,
            Some(_) => {
                self.entries.pop(key);
                false
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> DeletionKey {
        DeletionKey {
            region: RegionName::new("eu1"),
            kind: IdKind::Identity,
            id: Arc::from(id),
        }
    }

    #[test]
    fn remembers_within_ttl_and_capacity() {
        let t0 = Instant::now();
        let mut r = RecentlyDeleted::new(2, Duration::from_secs(10));
        r.remember(key("a"), t0);
        r.remember(key("b"), t0);
        assert!(r.contains(&key("a"), t0));
        r.remember(key("c"), t0); // evicts b, the least recently used
        assert!(!r.contains(&key("b"), t0));
        assert!(r.contains(&key("a"), t0 + Duration::from_secs(9)));
        assert!(!r.contains(&key("a"), t0 + Duration::from_secs(10)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn kind_and_region_are_part_of_the_key() {
        let t0 = Instant::now();
        let mut r = RecentlyDeleted::new(10, Duration::from_secs(10));
        r.remember(key("a"), t0);
        let mut other = key("a");
        other.kind = IdKind::Guid;
        assert!(!r.contains(&other, t0));
        other.kind = IdKind::Identity;
        other.region = RegionName::new("us1");
        assert!(!r.contains(&other, t0));
    }
}
