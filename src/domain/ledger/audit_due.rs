//! Audit records the ledger asks for before the events they name finish,
//! and the merging of `already_deleted` ones into few records.

use std::sync::Arc;

use super::EventId;
use crate::domain::event::SourceRef;
use crate::domain::ids::{IdKind, RegionName};
use crate::domain::outcome::AuditStatus;

/// An audit record to write before the events it names may finish (audit
/// on): the pipeline writes it and reports back with
/// [`Ledger::audited`](super::Ledger::audited).
#[derive(Debug, Clone)]
pub struct AuditDue {
    pub region: RegionName,
    pub kind: IdKind,
    pub ids: Vec<Arc<str>>,
    pub status: AuditStatus,
    /// CleverTap's message for a rejection.
    pub message: Option<String>,
    /// Requests it took (set by the caller, who knows them).
    pub attempts: u32,
    /// The source records it covers, sorted, each once.
    pub sources: Vec<SourceRef>,
    /// The events it covers, each once: hand them back to `audited`.
    pub events: Vec<EventId>,
}

/// Merges the `already_deleted` records of one chunk of admissions (one per
/// event as admitted) into few records: one per region and id kind, at most
/// `max_ids` distinct ids each. Other records pass unchanged.
pub fn merge_already_deleted(audits: Vec<AuditDue>, max_ids: usize) -> Vec<AuditDue> {
    let mut out: Vec<AuditDue> = Vec::with_capacity(audits.len());
    let mut open: Vec<usize> = Vec::new();
    for a in audits {
        if a.status != AuditStatus::AlreadyDeleted {
            out.push(a);
            continue;
        }
        let fits = open.iter().copied().find(|&i| {
            let o = &out[i];
            let new_ids = a.ids.iter().filter(|id| !o.ids.contains(id)).count();
            o.region == a.region && o.kind == a.kind && o.ids.len() + new_ids <= max_ids
        });
        match fits {
            Some(i) => {
                let o = &mut out[i];
                for id in a.ids {
                    if !o.ids.contains(&id) {
                        o.ids.push(id);
                    }
                }
                o.sources.extend(a.sources);
                o.events.extend(a.events);
            }
            None => {
                open.push(out.len());
                out.push(a);
            }
        }
    }
    for &i in &open {
        out[i].sources.sort();
        out[i].sources.dedup();
    }
    out
}
