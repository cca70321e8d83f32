//! Typed delete batches and the per-(region, kind) batcher that fills them.

use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::ids::{IdKind, RegionName};

/// CleverTap's limit of ids in one `identity` or `guid` array.
pub const API_MAX_IDS: usize = 100;

/// How many ids a batch may hold: 1..=100, checked once at configuration time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCapacity(usize);

impl BatchCapacity {
    pub fn new(n: usize) -> Option<Self> {
        (1..=API_MAX_IDS).contains(&n).then_some(BatchCapacity(n))
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// One request's worth of deletions: one region, one id kind, 1..=100 ids.
/// The fields are private so no code path can build a mixed or oversize batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBatch {
    region: RegionName,
    kind: IdKind,
    ids: Vec<Arc<str>>,
}

impl DeleteBatch {
    /// `None` when `ids` is empty or longer than [`API_MAX_IDS`].
    pub fn new(region: RegionName, kind: IdKind, ids: Vec<Arc<str>>) -> Option<Self> {
        (!ids.is_empty() && ids.len() <= API_MAX_IDS).then_some(DeleteBatch { region, kind, ids })
    }

    pub fn region(&self) -> &RegionName {
        &self.region
    }

    pub fn kind(&self) -> IdKind {
        self.kind
    }

    pub fn ids(&self) -> &[Arc<str>] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Halves a batch of two or more ids (to isolate ids CleverTap rejects);
    /// `Err(self)` for a single id.
    pub fn split(mut self) -> Result<(DeleteBatch, DeleteBatch), DeleteBatch> {
        if self.ids.len() < 2 {
            return Err(self);
        }
        let back = self.ids.split_off(self.ids.len() / 2);
        let second = DeleteBatch {
            region: self.region.clone(),
            kind: self.kind,
            ids: back,
        };
        Ok((self, second))
    }

    /// The request body CleverTap expects: `{"identity": [...]}` or `{"guid": [...]}`.
    pub fn request_body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + self.ids.iter().map(|i| i.len() + 3).sum::<usize>());
        body.extend_from_slice(b"{\"");
        body.extend_from_slice(self.kind.as_str().as_bytes());
        body.extend_from_slice(b"\":");
        let ids: Vec<&str> = self.ids.iter().map(|i| &**i).collect();
        serde_json::to_writer(&mut body, &ids).expect("serializing strings cannot fail");
        body.push(b'}');
        body
    }
}

struct OpenBatch {
    ids: Vec<Arc<str>>,
    opened: Instant,
}

/// Collects ids per (region, kind) and closes a batch when it is full or its
/// linger time has passed.
pub struct RegionBatcher {
    capacity: BatchCapacity,
    linger: Duration,
    open: HashMap<(RegionName, IdKind), OpenBatch>,
}

impl RegionBatcher {
    pub fn new(capacity: BatchCapacity, linger: Duration) -> Self {
        RegionBatcher {
            capacity,
            linger,
            open: HashMap::default(),
        }
    }

    /// Adds an id; returns the batch it closed when that made it full.
    pub fn push(
        &mut self,
        region: &RegionName,
        kind: IdKind,
        id: Arc<str>,
        now: Instant,
    ) -> Option<DeleteBatch> {
        let cap = self.capacity.get();
        let open = self
            .open
            .entry((region.clone(), kind))
            .or_insert_with(|| OpenBatch {
                ids: Vec::with_capacity(cap),
                opened: now,
            });
        open.ids.push(id);
        if open.ids.len() >= cap {
            let full = self
                .open
                .remove(&(region.clone(), kind))
                .expect("just filled");
            return DeleteBatch::new(region.clone(), kind, full.ids);
        }
        None
    }

    /// Closes every batch whose linger time has passed, except those of
    /// `saturated` regions: their linger starts again (they fill up meanwhile,
    /// and a full batch closes at once), so a busy account gets full batches.
    pub fn take_due(
        &mut self,
        now: Instant,
        saturated: impl Fn(&RegionName) -> bool,
    ) -> Vec<DeleteBatch> {
        let linger = self.linger;
        for ((region, _), b) in self.open.iter_mut() {
            if now.duration_since(b.opened) >= linger && saturated(region) {
                b.opened = now;
            }
        }
        self.take_where(|b| now.duration_since(b.opened) >= linger)
    }

    /// Closes every open batch (shutdown, rebalance).
    pub fn take_all(&mut self) -> Vec<DeleteBatch> {
        self.take_where(|_| true)
    }

    fn take_where(&mut self, due: impl Fn(&OpenBatch) -> bool) -> Vec<DeleteBatch> {
        let keys: Vec<(RegionName, IdKind)> = self
            .open
            .iter()
            .filter(|(_, b)| due(b))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let b = self.open.remove(&key)?;
                DeleteBatch::new(key.0, key.1, b.ids)
            })
            .collect()
    }

    /// When the oldest open batch falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|b| b.opened + self.linger).min()
    }

    pub fn open_ids(&self) -> usize {
        self.open.values().map(|b| b.ids.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Arc<str>> {
        (0..n)
            .map(|i| Arc::from(format!("id{i}").as_str()))
            .collect()
    }

    #[test]
    fn batch_bounds() {
        let r = RegionName::new("eu1");
        assert!(DeleteBatch::new(r.clone(), IdKind::Guid, vec![]).is_none());
        assert!(DeleteBatch::new(r.clone(), IdKind::Guid, ids(101)).is_none());
        assert_eq!(
            DeleteBatch::new(r, IdKind::Guid, ids(100)).unwrap().len(),
            100
        );
        assert!(BatchCapacity::new(0).is_none());
        assert!(BatchCapacity::new(101).is_none());
    }

    #[test]
    fn split_halves_until_single() {
        let b = DeleteBatch::new(RegionName::new("eu1"), IdKind::Identity, ids(5)).unwrap();
        let (a, c) = b.split().unwrap();
        assert_eq!((a.len(), c.len()), (2, 3));
        assert_eq!(a.kind(), IdKind::Identity);
        let single = DeleteBatch::new(RegionName::new("eu1"), IdKind::Identity, ids(1)).unwrap();
        assert!(single.split().is_err());
    }

    #[test]
    fn body_has_one_kind() {
        let b = DeleteBatch::new(
            RegionName::new("eu1"),
            IdKind::Guid,
            vec![Arc::from("a\"b")],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.request_body()).unwrap();
        assert_eq!(v, serde_json::json!({"guid": ["a\"b"]}));
    }

    #[test]
    fn batcher_closes_on_size_and_linger_per_region_and_kind() {
        let cap = BatchCapacity::new(3).unwrap();
        let mut b = RegionBatcher::new(cap, Duration::from_millis(100));
        let t0 = Instant::now();
        let eu = RegionName::new("eu1");
        let us = RegionName::new("us1");
        assert!(b.push(&eu, IdKind::Guid, "a".into(), t0).is_none());
        assert!(b.push(&eu, IdKind::Identity, "b".into(), t0).is_none());
        assert!(b.push(&us, IdKind::Guid, "c".into(), t0).is_none());
        assert!(b.push(&eu, IdKind::Guid, "d".into(), t0).is_none());
        let full = b.push(&eu, IdKind::Guid, "e".into(), t0).unwrap();
        assert_eq!(full.len(), 3);
        assert_eq!(full.region(), &eu);
        assert_eq!(b.open_ids(), 2);
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(100)));
        let idle = |_: &RegionName| false;
        assert!(b.take_due(t0 + Duration::from_millis(50), idle).is_empty());
        let due = b.take_due(t0 + Duration::from_millis(100), idle);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.len() == 1));
        assert_eq!(b.open_ids(), 0);
        assert!(b.next_deadline().is_none());
    }

    #[test]
    fn a_saturated_region_keeps_its_partial_batch_open_to_fill() {
        let cap = BatchCapacity::new(3).unwrap();
        let linger = Duration::from_millis(100);
        let mut b = RegionBatcher::new(cap, linger);
        let t0 = Instant::now();
        let eu = RegionName::new("eu1");
        let us = RegionName::new("us1");
        b.push(&eu, IdKind::Guid, "a".into(), t0);
        b.push(&us, IdKind::Guid, "b".into(), t0);
        let t1 = t0 + linger;
        // eu1's account is busy: only us1's batch closes; eu1's lingers again.
        let due = b.take_due(t1, |r: &RegionName| r == &eu);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].region(), &us);
        assert_eq!(b.next_deadline(), Some(t1 + linger));
        // It fills meanwhile and closes full, at once.
        b.push(&eu, IdKind::Guid, "c".into(), t1);
        let full = b.push(&eu, IdKind::Guid, "d".into(), t1).unwrap();
        assert_eq!(full.len(), 3);
        // A partial batch of a region no longer busy closes at its deadline.
        b.push(&eu, IdKind::Guid, "e".into(), t1);
        assert_eq!(b.take_due(t1 + linger, |_: &RegionName| false).len(), 1);
    }
}
