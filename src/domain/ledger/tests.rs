use super::*;
use crate::domain::event::DeletionRequest;

/// Takes the commits and confirms them, as a successful commit would.
fn commit(l: &mut Ledger) -> Vec<(PartitionId, i64)> {
    let marks = l.take_commits();
    for (p, o) in &marks {
        l.commit_result(p, *o, true);
    }
    marks
}

fn ledger(cap: usize) -> Ledger {
    Ledger::new(LedgerSettings {
        capacity: BatchCapacity::new(cap).unwrap(),
        linger: Duration::from_millis(100),
        recent_capacity: 1000,
        recent_ttl: Duration::from_secs(60),
        audit: false,
    })
}

fn delete(region: &str, ids: &[(IdKind, &str)]) -> Decoded {
    Decoded::Delete(DeletionRequest {
        region: RegionName::new(region),
        ids: ids.iter().map(|(k, i)| (*k, Arc::from(*i))).collect(),
        cloud_event: None,
    })
}

const G: IdKind = IdKind::Guid;
const I: IdKind = IdKind::Identity;

#[test]
fn event_with_both_kinds_finishes_when_both_succeed() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    let pr = l.admit(
        &p,
        0,
        RawRecord::default(),
        delete("eu1", &[(I, "u"), (G, "g")]),
        now,
    );
    assert!(pr.finished.is_empty());
    let batches = l.take_all_batches();
    assert_eq!(batches.len(), 2);
    let guid = batches.iter().find(|b| b.kind() == G).unwrap();
    let ident = batches.iter().find(|b| b.kind() == I).unwrap();
    assert!(l.deleted(guid, now).finished.is_empty());
    assert_eq!(commit(&mut l), vec![(p.clone(), 0)]);
    assert_eq!(l.deleted(ident, now).finished, vec![Finish::Deleted]);
    assert_eq!(commit(&mut l), vec![(p, 1)]);
    assert_eq!(l.events_in_memory(), 0);
    assert_eq!(l.deletions_pending(), 0);
}

#[test]
fn duplicates_attach_to_the_pending_deletion_then_use_memory() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
    l.admit(&p, 1, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
    let batches = l.take_all_batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].len(), 1, "the repeat is not sent again");
    assert_eq!(
        l.deleted(&batches[0], now).finished,
        vec![Finish::Deleted, Finish::Deduplicated]
    );
    // Once deleted, a later repeat finishes at once with no request.
    let pr = l.admit(&p, 2, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
    assert_eq!(pr.finished, vec![Finish::Deduplicated]);
    assert!(l.take_all_batches().is_empty());
    // Same id in another region is another deletion.
    l.admit(&p, 3, RawRecord::default(), delete("us1", &[(G, "x")]), now);
    assert_eq!(l.take_all_batches().len(), 1);
}

#[test]
fn nothing_is_remembered_before_success() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
    let b = l.take_all_batches();
    // Revoked before success: a redelivery must send it again once the
    // first request is gone.
    l.revoke(std::slice::from_ref(&p));
    let rejected = l.rejected(
        &RegionName::new("eu1"),
        G,
        &b[0].ids()[0],
        DeadLetterReason::ApiRejected,
        "bad",
    );
    assert!(
        rejected.dead_letters.is_empty(),
        "revoked events are not dead-lettered"
    );
    l.assign(p.clone());
    l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "x")]), now);
    assert_eq!(l.take_all_batches().len(), 1);
}

#[test]
fn sources_of_lists_each_waiting_event_once() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    l.admit(
        &p,
        4,
        RawRecord::default(),
        delete("eu1", &[(G, "a"), (G, "b")]),
        now,
    );
    l.admit(&p, 9, RawRecord::default(), delete("eu1", &[(G, "a")]), now);
    let b = l.take_all_batches().pop().unwrap();
    assert_eq!(
        l.sources_of(b.region(), b.kind(), b.ids()),
        vec![source(&p, 4, None), source(&p, 9, None)]
    );
    l.deleted(&b, now);
    assert!(l.sources_of(b.region(), b.kind(), b.ids()).is_empty());
}

#[test]
fn records_read_again_after_a_revoke_are_redeliveries() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    let redelivered = |l: &mut Ledger, offset| {
        l.admit(&p, offset, RawRecord::default(), Decoded::Skip, now)
            .redelivered
    };
    assert_eq!(redelivered(&mut l, 0), 0);
    assert_eq!(redelivered(&mut l, 1), 0);
    l.revoke(&[PartitionId::new("t", 0)]);
    l.assign(PartitionId::new("t", 0));
    assert_eq!(redelivered(&mut l, 1), 1);
    assert_eq!(redelivered(&mut l, 2), 0);
}

#[test]
fn full_batches_close_on_admit() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(2);
    let now = Instant::now();
    assert!(l
        .admit(&p, 0, RawRecord::default(), delete("eu1", &[(G, "a")]), now)
        .batches
        .is_empty());
    let pr = l.admit(
        &p,
        1,
        RawRecord::default(),
        delete("eu1", &[(G, "b"), (G, "c")]),
        now,
    );
    assert_eq!(pr.batches.len(), 1);
    assert_eq!(pr.batches[0].len(), 2);
    assert_eq!(
        l.next_batch_deadline(),
        Some(now + Duration::from_millis(100))
    );
}

#[test]
fn rejected_id_dead_letters_every_waiting_event_after_its_other_ids() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    let rec = RawRecord {
        key: Some(Bytes::from_static(b"k")),
        payload: Some(Bytes::from_static(b"{}")),
        timestamp_ms: None,
        replay_count: None,
        headers: Vec::new(),
    };
    l.admit(&p, 0, rec, delete("eu1", &[(G, "bad"), (I, "ok")]), now);
    l.admit(
        &p,
        1,
        RawRecord::default(),
        delete("eu1", &[(G, "bad")]),
        now,
    );
    let batches = l.take_all_batches();
    let pr = l.rejected(
        &RegionName::new("eu1"),
        G,
        &Arc::from("bad"),
        DeadLetterReason::ApiRejected,
        "Invalid guid",
    );
    assert_eq!(pr.dead_letters.len(), 1, "event 1 has nothing else pending");
    assert_eq!(pr.dead_letters[0].offset, 1);
    let ident = batches.iter().find(|b| b.kind() == I).unwrap();
    let pr = l.deleted(ident, now);
    assert_eq!(pr.dead_letters.len(), 1);
    let order = &pr.dead_letters[0];
    assert_eq!(order.offset, 0);
    assert_eq!(order.rejection.reason, DeadLetterReason::ApiRejected);
    assert!(order.rejection.detail.contains("Invalid guid"));
    assert_eq!(order.record.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(
        commit(&mut l),
        vec![(p.clone(), 0)],
        "not finished until the DLQ acks"
    );
    assert_eq!(
        l.dead_lettered(order.event).finished,
        vec![Finish::DeadLettered]
    );
    assert_eq!(commit(&mut l), vec![(p.clone(), 1)]);
    assert!(
        l.dead_lettered(order.event).finished.is_empty(),
        "acked once only"
    );
}

#[test]
fn bad_input_and_skips() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    assert_eq!(
        l.admit(&p, 0, RawRecord::default(), Decoded::Skip, now)
            .skipped,
        1
    );
    let pr = l.admit(
        &p,
        1,
        RawRecord::default(),
        Decoded::DeadLetter(Rejection {
            reason: DeadLetterReason::NotJson,
            detail: "x".into(),
        }),
        now,
    );
    assert_eq!(pr.dead_letters.len(), 1);
    assert_eq!(commit(&mut l), vec![(p.clone(), 1)]);
    l.dead_lettered(pr.dead_letters[0].event);
    assert_eq!(commit(&mut l), vec![(p, 2)]);
}

#[test]
fn revoke_returns_watermarks_and_drops_late_acks() {
    let p = PartitionId::new("t", 0);
    let q = PartitionId::new("t", 1);
    let mut l = ledger(10);
    let now = Instant::now();
    l.admit(&p, 5, RawRecord::default(), delete("eu1", &[(G, "a")]), now);
    l.admit(&q, 7, RawRecord::default(), delete("eu1", &[(G, "b")]), now);
    let batch = l.take_all_batches().pop().unwrap();
    assert_eq!(l.unfinished_in(std::slice::from_ref(&p)), 1);
    assert_eq!(l.revoke(std::slice::from_ref(&p)), vec![(p.clone(), 5)]);
    assert_eq!(l.events_in_memory(), 1);
    let pr = l.deleted(&batch, now);
    assert_eq!(pr.finished, vec![Finish::Deleted], "only q's event remains");
    assert_eq!(l.all_watermarks(), vec![(q, 8)]);
}

fn source(p: &PartitionId, offset: i64, cloud_event: Option<Arc<CloudEventRef>>) -> SourceRef {
    SourceRef {
        partition: p.clone(),
        offset,
        cloud_event,
    }
}

#[test]
fn audit_sources_name_the_cloudevent_of_each_event() {
    let p = PartitionId::new("t", 0);
    let mut l = Ledger::new(LedgerSettings {
        capacity: BatchCapacity::new(10).unwrap(),
        linger: Duration::from_millis(100),
        recent_capacity: 1000,
        recent_ttl: Duration::from_secs(60),
        audit: true,
    });
    let now = Instant::now();
    let ce = Arc::new(CloudEventRef {
        source: "/accounts".into(),
        id: "e-1".into(),
    });
    let Decoded::Delete(mut request) = delete("eu1", &[(G, "x")]) else {
        unreachable!()
    };
    request.cloud_event = Some(ce.clone());
    let record = RawRecord::default();
    l.admit(&p, 0, record.clone(), Decoded::Delete(request.clone()), now);
    l.admit(&p, 1, record.clone(), delete("eu1", &[(G, "x")]), now);
    let batch = l.take_all_batches().pop().unwrap();
    let pr = l.deleted(&batch, now);
    assert_eq!(
        pr.audits[0].sources,
        vec![source(&p, 0, Some(ce.clone())), source(&p, 1, None)]
    );
    // A repeat of a deletion confirmed moments before: its already_deleted
    // record names the CloudEvent too.
    let pr = l.admit(&p, 2, record, Decoded::Delete(request), now);
    assert_eq!(pr.audits[0].sources, vec![source(&p, 2, Some(ce))]);
}

#[test]
fn a_run_of_skipped_offsets_moves_the_watermark_but_never_past_an_unfinished_event() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    l.assign(p.clone());
    let mut pr = Progress::default();
    l.skip_run(&p, 0, 999, &mut pr);
    assert_eq!(pr.skipped, 1000);
    assert_eq!(l.events_in_memory(), 0, "skips are not remembered");
    assert_eq!(commit(&mut l), vec![(p.clone(), 1000)]);

    // A deletion at 1000 holds the commit while skips run on behind it.
    let batches = l
        .admit(
            &p,
            1000,
            RawRecord::default(),
            delete("eu1", &[(I, "a")]),
            now,
        )
        .batches;
    assert!(batches.is_empty(), "the batch lingers");
    let mut pr = Progress::default();
    l.skip_run(&p, 1001, 4999, &mut pr);
    assert!(
        commit(&mut l).is_empty(),
        "1000 is unfinished: nothing moves"
    );
    let batch = l.take_all_batches().pop().expect("one batch");
    assert_eq!(l.deleted(&batch, now).finished, vec![Finish::Deleted]);
    assert_eq!(commit(&mut l), vec![(p.clone(), 5000)]);

    // Read again (a rebalance gave the partition back): counted as redelivered.
    let mut pr = Progress::default();
    l.skip_run(&p, 4990, 5009, &mut pr);
    assert_eq!(pr.redelivered, 10);
    assert_eq!(commit(&mut l), vec![(p, 5010)]);
}

#[test]
fn a_repeat_of_a_deleted_id_finishes_at_once_and_moves_the_watermark() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    l.assign(p.clone());
    l.admit(&p, 0, RawRecord::default(), delete("eu1", &[(I, "a")]), now);
    let batch = l.take_all_batches().pop().expect("one batch");
    l.deleted(&batch, now);
    let pr = l.admit(&p, 1, RawRecord::default(), delete("eu1", &[(I, "a")]), now);
    assert_eq!(pr.finished, vec![Finish::Deduplicated]);
    assert!(
        pr.batches.is_empty() && l.take_all_batches().is_empty(),
        "no request"
    );
    assert_eq!(l.events_in_memory(), 0);
    assert_eq!(commit(&mut l), vec![(p, 2)]);
}

#[test]
fn a_dead_letter_written_before_finishes_its_event_only_for_the_same_record() {
    let p = PartitionId::new("t", 0);
    let mut l = ledger(10);
    let now = Instant::now();
    let record = |payload: &str| RawRecord {
        key: Some(Bytes::from_static(b"k")),
        payload: Some(Bytes::copy_from_slice(payload.as_bytes())),
        ..RawRecord::default()
    };
    let poison = || {
        Decoded::DeadLetter(Rejection {
            reason: DeadLetterReason::NotJson,
            detail: String::new(),
        })
    };
    let digest = |payload: &str| record_digest(Some(b"k"), Some(payload.as_bytes()));
    l.remember_dead_lettered([
        (p.clone(), 0, digest("bad")),
        // Another record once stood at offset 1 (a recreated topic, say).
        (p.clone(), 1, digest("other")),
    ]);
    let pr = l.admit(&p, 0, record("bad"), poison(), now);
    assert_eq!(pr.finished, vec![Finish::DeadLettered]);
    assert!(pr.dead_letters.is_empty(), "not written again");
    assert_eq!(pr.dead_letters_found_written, 1);
    let pr = l.admit(&p, 1, record("bad"), poison(), now);
    assert_eq!(pr.dead_letters.len(), 1, "a different record is written");
    assert_eq!(pr.dead_letters_found_written, 0);
}
