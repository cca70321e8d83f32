//! Ack-aware deduplication: one table holds every deletion that is open (in a
//! batch or in flight, with the events waiting on it) and, for a bounded time
//! and number, the deletions CleverTap confirmed. A repeat of an open deletion
//! waits for it; a repeat of a confirmed one finishes at once. Only confirmed
//! successes are ever remembered as deleted.
//!
//! One hash lookup per id admitted and one per id confirmed: this table is on
//! the per-event path, and separate "open" and "recently deleted" maps (plus
//! an LRU list) cost three to five lookups and a node allocation per id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::hash::BuildHasher;

// foldhash: keys come from the broker's events and CleverTap answers only.
use hashbrown::HashTable;

use crate::domain::ids::{IdKind, RegionName};

/// One deletion: an id of a kind in a region's account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeletionKey {
    pub region: RegionName,
    pub kind: IdKind,
    pub id: Arc<str>,
}

/// What admitting one (event, id) pair found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New: the caller must request the deletion (put it in a batch).
    Requested,
    /// Already open: the event waits for that request.
    Joined,
    /// Confirmed deleted within the time limit: nothing to wait for.
    AlreadyDeleted,
}

/// The events that waited on a deletion that just ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiters<W> {
    first: Option<W>,
    more: Vec<W>,
}

impl<W> Waiters<W> {
    fn none() -> Self {
        Waiters {
            first: None,
            more: Vec::new(),
        }
    }

    /// The waiters of an open slot that ends now (see `Slot::Open` for the box).
    #[allow(clippy::box_collection)]
    fn taken(first: W, more: Option<Box<Vec<W>>>) -> Self {
        Waiters {
            first: Some(first),
            more: more.map(|m| *m).unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }
}

impl<W> IntoIterator for Waiters<W> {
    type Item = W;
    type IntoIter = std::iter::Chain<std::option::IntoIter<W>, std::vec::IntoIter<W>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.more)
    }
}

/// A deletion's state. Kept small: the table holds up to `capacity`
/// confirmed deletions (200,000 by default).
#[derive(Debug)]
enum Slot<W> {
    /// Open in a batch or in flight; the waiters are told when it ends. A
    /// second waiter (a repeat while in flight) is rare, hence the box: it
    /// keeps the slot at 24 bytes where a `Vec` would make it 40.
    #[allow(clippy::box_collection)]
    Open { first: W, more: Option<Box<Vec<W>>> },
    /// Confirmed; `seq` is its entry in the expiry queue.
    Deleted { seq: u64 },
}

impl<W> Slot<W> {
    fn open(waiter: W) -> Self {
        Slot::Open {
            first: waiter,
            more: None,
        }
    }
}

/// When a confirmed deletion was remembered, and its key's hash to find it
/// again (the key itself is not stored twice).
struct ExpiryEntry {
    hash: u64,
    at: Instant,
}

/// Open deletions with their waiters (`W`, an event id) and recently
/// confirmed ones, at most `capacity` of those for at most `ttl` each.
///
/// The entries live in a slab; the hash table holds only their 4-byte
/// indexes. Under constant churn a hash table settles at about twice its
/// entry count in buckets, so small buckets keep the 200,000 remembered
/// deletions of the default at about 20 MiB.
pub struct DeletionTable<W> {
    index: HashTable<u32>,
    entries: Vec<Option<(DeletionKey, Slot<W>)>>,
    /// Free places in `entries`.
    free: Vec<u32>,
    hasher: foldhash::fast::RandomState,
    /// Confirmed deletions, oldest first; the entry at index `i` has
    /// sequence number `first_seq + i`. An entry whose slot has since been
    /// reopened or confirmed again (its slot holds another `seq`) is stale.
    expiry: VecDeque<ExpiryEntry>,
    first_seq: u64,
    open: usize,
    deleted: usize,
    capacity: usize,
    ttl: Duration,
}

/// The key at `place` (a place the index points to is always filled).
fn key_at<W>(entries: &[Option<(DeletionKey, Slot<W>)>], place: u32) -> &DeletionKey {
    &entries[place as usize]
        .as_ref()
        .expect("the index points to filled places")
        .0
}

impl<W> DeletionTable<W> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        DeletionTable {
            index: HashTable::new(),
            entries: Vec::new(),
            free: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
            expiry: VecDeque::new(),
            first_seq: 0,
            open: 0,
            deleted: 0,
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn hash(&self, key: &DeletionKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The place of `key` in `entries`.
    fn find(&self, hash: u64, key: &DeletionKey) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(hash, |&place| key_at(entries, place) == key)
            .copied()
    }

    fn slot_mut(&mut self, place: u32) -> &mut Slot<W> {
        &mut self.entries[place as usize]
            .as_mut()
            .expect("the index points to filled places")
            .1
    }

    fn insert(&mut self, hash: u64, key: DeletionKey, slot: Slot<W>) {
        let place = match self.free.pop() {
            Some(place) => {
                self.entries[place as usize] = Some((key, slot));
                place
            }
            None => {
                self.entries.push(Some((key, slot)));
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 deletions")
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index
            .insert_unique(hash, place, |&p| hasher.hash_one(key_at(entries, p)));
    }

    /// Removes the entry at `place` (found under `hash`).
    fn remove(&mut self, hash: u64, place: u32) -> Slot<W> {
        if let Ok(found) = self.index.find_entry(hash, |&p| p == place) {
            found.remove();
        }
        self.free.push(place);
        self.entries[place as usize]
            .take()
            .expect("the index points to filled places")
            .1
    }

    /// `waiter` needs `key` deleted.
    pub fn admit(&mut self, key: &DeletionKey, waiter: W, now: Instant) -> Admission {
        let hash = self.hash(key);
        let Some(place) = self.find(hash, key) else {
            self.insert(hash, key.clone(), Slot::open(waiter));
            self.open += 1;
            return Admission::Requested;
        };
        let (first_seq, ttl) = (self.first_seq, self.ttl);
        let at = match self.slot_mut(place) {
            Slot::Open { more, .. } => {
                more.get_or_insert_with(Default::default).push(waiter);
                return Admission::Joined;
            }
            Slot::Deleted { seq } => *seq,
        };
        let at = self.expiry[(at - first_seq) as usize].at;
        if now.saturating_duration_since(at) < ttl {
            return Admission::AlreadyDeleted;
        }
        // Expired: request it again; its queue entry is now stale.
        *self.slot_mut(place) = Slot::open(waiter);
        self.deleted -= 1;
        self.open += 1;
        Admission::Requested
    }

    /// CleverTap confirmed `key`: returns its waiters and remembers it.
    pub fn confirm(&mut self, key: DeletionKey, now: Instant) -> Waiters<W> {
        let hash = self.hash(&key);
        let seq = self.first_seq + self.expiry.len() as u64;
        let waiters = match self.find(hash, &key) {
            Some(place) => match std::mem::replace(self.slot_mut(place), Slot::Deleted { seq }) {
                Slot::Open { first, more } => {
                    self.open -= 1;
                    self.deleted += 1;
                    Waiters::taken(first, more)
                }
                Slot::Deleted { .. } => Waiters::none(),
            },
            None => {
                self.insert(hash, key, Slot::Deleted { seq });
                self.deleted += 1;
                Waiters::none()
            }
        };
        self.expiry.push_back(ExpiryEntry { hash, at: now });
        self.expire(now);
        waiters
    }

    /// Remembers `key` as confirmed at `at`, before this process started
    /// (read back from below a committed offset), unless the table holds it
    /// already: an open deletion keeps its waiters. Call oldest first.
    pub fn remember(&mut self, key: DeletionKey, at: Instant) {
        let hash = self.hash(&key);
        if self.find(hash, &key).is_some() {
            return;
        }
        let seq = self.first_seq + self.expiry.len() as u64;
        self.insert(hash, key, Slot::Deleted { seq });
        self.deleted += 1;
        self.expiry.push_back(ExpiryEntry { hash, at });
        self.expire(at);
    }

    /// CleverTap rejected `key`: returns its waiters; nothing is remembered.
    pub fn reject(&mut self, key: &DeletionKey) -> Waiters<W> {
        let hash = self.hash(key);
        let Some(place) = self.find(hash, key) else {
            return Waiters::none();
        };
        if !matches!(self.slot_mut(place), Slot::Open { .. }) {
            return Waiters::none();
        }
        self.open -= 1;
        match self.remove(hash, place) {
            Slot::Open { first, more } => Waiters::taken(first, more),
            Slot::Deleted { .. } => unreachable!("checked above"),
        }
    }

    /// The waiters of an open deletion.
    pub fn waiters(&self, key: &DeletionKey) -> impl Iterator<Item = &W> {
        let slot = self
            .find(self.hash(key), key)
            .and_then(|place| self.entries[place as usize].as_ref());
        let (first, more) = match slot {
            Some((_, Slot::Open { first, more })) => (Some(first), more.as_deref()),
            _ => (None, None),
        };
        first.into_iter().chain(more.into_iter().flatten())
    }

    /// Forgets confirmed deletions older than the ttl, and the oldest while
    /// the queue (stale entries included, so memory stays bounded) holds more
    /// than `capacity`.
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.expiry.front() {
            // Decided without a lookup in the common case: nothing to forget.
            let over = self.expiry.len() > self.capacity;
            if !over && now.saturating_duration_since(oldest.at) < self.ttl {
                break;
            }
            let (hash, seq) = (oldest.hash, self.first_seq);
            let entries = &self.entries;
            let live = self.index.find(hash, |&p| {
                matches!(&entries[p as usize], Some((_, Slot::Deleted { seq: s })) if *s == seq)
            });
            if let Some(&place) = live {
                self.remove(hash, place);
                self.deleted -= 1;
            }
            // Otherwise stale: the slot was reopened or confirmed again.
            self.expiry.pop_front();
            self.first_seq += 1;
        }
    }

    /// Open deletions (in a batch or in flight).
    pub fn open_len(&self) -> usize {
        self.open
    }

    /// Confirmed deletions remembered.
    pub fn deleted_len(&self) -> usize {
        self.deleted
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
    fn repeats_join_the_open_deletion_then_finish_at_once() {
        let t0 = Instant::now();
        let mut t: DeletionTable<u32> = DeletionTable::new(10, Duration::from_secs(10));
        assert_eq!(t.admit(&key("a"), 1, t0), Admission::Requested);
        assert_eq!(t.admit(&key("a"), 2, t0), Admission::Joined);
        assert_eq!(t.waiters(&key("a")).collect::<Vec<_>>(), [&1, &2]);
        assert_eq!(
            t.confirm(key("a"), t0).into_iter().collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(t.admit(&key("a"), 3, t0), Admission::AlreadyDeleted);
        assert_eq!((t.open_len(), t.deleted_len()), (0, 1));
    }

    #[test]
    fn remembered_deletions_keep_their_age_and_never_touch_open_ones() {
        let now = Instant::now() + Duration::from_secs(100);
        let mut t: DeletionTable<u32> = DeletionTable::new(10, Duration::from_secs(10));
        t.admit(&key("open"), 1, now);
        t.remember(key("old"), now - Duration::from_secs(11));
        t.remember(key("recent"), now - Duration::from_secs(9));
        t.remember(key("open"), now - Duration::from_secs(1));
        assert_eq!(t.admit(&key("recent"), 2, now), Admission::AlreadyDeleted);
        assert_eq!(t.admit(&key("old"), 3, now), Admission::Requested);
        // The open deletion still has its waiter, and is not "deleted".
        assert_eq!(t.waiters(&key("open")).collect::<Vec<_>>(), [&1]);
        assert_eq!(t.admit(&key("open"), 4, now), Admission::Joined);
        // Two seconds on, the one remembered 9 s ago has expired.
        let later = now + Duration::from_secs(2);
        assert_eq!(t.admit(&key("recent"), 5, later), Admission::Requested);
    }

    #[test]
    fn rejection_is_not_remembered() {
        let t0 = Instant::now();
        let mut t: DeletionTable<u32> = DeletionTable::new(10, Duration::from_secs(10));
        t.admit(&key("a"), 1, t0);
        assert_eq!(t.reject(&key("a")).into_iter().collect::<Vec<_>>(), [1]);
        assert_eq!(t.admit(&key("a"), 2, t0), Admission::Requested);
        // A rejection of a confirmed id (another request's answer) keeps it.
        t.confirm(key("a"), t0);
        assert!(t.reject(&key("a")).is_empty());
        assert_eq!(t.admit(&key("a"), 3, t0), Admission::AlreadyDeleted);
    }

    #[test]
    fn remembers_within_ttl_and_capacity() {
        let t0 = Instant::now();
        let mut t: DeletionTable<u32> = DeletionTable::new(2, Duration::from_secs(10));
        t.confirm(key("a"), t0);
        t.confirm(key("b"), t0);
        t.confirm(key("c"), t0); // over capacity: forgets a, the oldest
        assert_eq!(t.deleted_len(), 2);
        assert_eq!(t.admit(&key("a"), 1, t0), Admission::Requested);
        assert_eq!(t.admit(&key("b"), 2, t0), Admission::AlreadyDeleted);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.admit(&key("c"), 3, later), Admission::Requested);
        // Confirming again later forgets expired entries on the way.
        t.confirm(key("d"), later);
        assert_eq!(t.admit(&key("b"), 4, later), Admission::Requested);
        assert_eq!(t.deleted_len(), 1, "only d is remembered");
        assert_eq!(t.open_len(), 3, "a, b and c are open again");
    }

    #[test]
    fn stale_queue_entries_do_not_forget_a_newer_confirmation() {
        let t0 = Instant::now();
        let mut t: DeletionTable<u32> = DeletionTable::new(2, Duration::from_secs(10));
        t.confirm(key("a"), t0);
        let t1 = t0 + Duration::from_secs(10);
        // a expired, requested and confirmed again: its first entry is stale.
        assert_eq!(t.admit(&key("a"), 1, t1), Admission::Requested);
        assert_eq!(t.confirm(key("a"), t1).into_iter().collect::<Vec<_>>(), [1]);
        t.confirm(key("b"), t1);
        assert_eq!(t.admit(&key("a"), 2, t1), Admission::AlreadyDeleted);
        assert_eq!(t.deleted_len(), 2);
    }

    #[test]
    fn kind_and_region_are_part_of_the_key() {
        let t0 = Instant::now();
        let mut t: DeletionTable<u32> = DeletionTable::new(10, Duration::from_secs(10));
        t.confirm(key("a"), t0);
        let mut other = key("a");
        other.kind = IdKind::Guid;
        assert_eq!(t.admit(&other, 1, t0), Admission::Requested);
        other.kind = IdKind::Identity;
        other.region = RegionName::new("us1");
        assert_eq!(t.admit(&other, 2, t0), Admission::Requested);
    }
}
