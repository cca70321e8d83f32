//! Fault injection and scripted answers: the random faults rolled per request
//! and the 2xx answers outside the contract given to marked ids.

use std::time::Duration;

use axum::http::StatusCode;
use rand::Rng;

/// A 2xx answer outside the documented contract, given to every request
/// that holds an id marked with [`FakeCleverTap::odd_ids`](super::FakeCleverTap::odd_ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OddAnswer {
    /// 200 with an empty body; nothing is deleted.
    Empty,
    /// 204 No Content; nothing is deleted.
    NoContent,
    /// 200 with a proxy's HTML page; nothing is deleted.
    Html,
    /// 200 `{"status":"partial"}`; nothing is deleted.
    Partial,
    /// 200 with a UTF-8 byte order mark before `{"status":"success"}`; the
    /// whole request is deleted.
    BomSuccess,
    /// 200 `{"status":"success","processed":N,"unprocessed":[...]}` listing
    /// the request's marked ids: the others are deleted, those are not.
    Unprocessed,
}

/// Injected faults; each probability is rolled independently per valid request,
/// in the order too_many, server_error, lost_reply, empty_200, hang.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability of answering 500/502/503 (random pick) without deleting.
    pub server_error: f64,
    /// Probability of answering 429 without deleting.
    pub too_many: f64,
    /// Probability of deleting (recording the ids) and then answering 502.
    pub lost_reply: f64,
    /// Probability of answering 200 with an empty body, deleting nothing
    /// (a proxy's artefact: the daemon must not count it as a deletion).
    pub empty_200: f64,
    /// Probability of sleeping `hang_for` before answering (then answering normally).
    pub hang: f64,
    pub hang_for: Duration,
    /// If set, 429 answers carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
}

/// The random fault picked for one request.
pub(super) enum Fault {
    None,
    TooMany,
    ServerError(StatusCode),
    LostReply,
    Empty200,
    Hang(Duration),
}

pub(super) fn roll_faults(f: &Faults) -> Fault {
    // Skip the rng entirely in the common no-fault case (benchmarks).
    if f.too_many <= 0.0
        && f.server_error <= 0.0
        && f.lost_reply <= 0.0
        && f.empty_200 <= 0.0
        && f.hang <= 0.0
    {
        return Fault::None;
    }
    // `random::<f64>()` is in [0, 1): p >= 1 always fires, p <= 0 or NaN never,
    // and unlike `random_bool` it cannot panic on an out-of-range p.
    let mut rng = rand::rng();
    if rng.random::<f64>() < f.too_many {
        return Fault::TooMany;
    }
    if rng.random::<f64>() < f.server_error {
        const CODES: [StatusCode; 3] = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        return Fault::ServerError(CODES[rng.random_range(0..CODES.len())]);
    }
    if rng.random::<f64>() < f.lost_reply {
        return Fault::LostReply;
    }
    if rng.random::<f64>() < f.empty_200 {
        return Fault::Empty200;
    }
    if rng.random::<f64>() < f.hang {
        return Fault::Hang(f.hang_for);
    }
    Fault::None
}
