//! The outcomes and reasons the daemon reports: how an event finished, why
//! a request is retried, why a record went to the dead-letter topic, what
//! an audit record says, why a Kafka write failed, what the status view
//! shows of a partition. A leaf: the domain modules that decide these and
//! `metrics`/`health`/`status` that record them both import it, and it
//! imports nothing of the crate (Vector's "internal events" idea: each
//! observable happening is a named value with one label spelling).

use std::fmt;

/// How an event finished, the `outcome` label of `events_finished_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finish {
    /// At least one deletion was requested for it and all its deletions succeeded.
    Deleted,
    /// All its ids were already deleted or being deleted for other events.
    Deduplicated,
    /// The dead-letter topic acknowledged it.
    DeadLettered,
    /// Not an event this daemon handles.
    Skipped,
}

impl Finish {
    /// In discriminant order, so `ALL[f as usize] == f`.
    pub const ALL: [Finish; 4] = [
        Finish::Deleted,
        Finish::Deduplicated,
        Finish::DeadLettered,
        Finish::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Deleted => "deleted",
            Finish::Deduplicated => "deduplicated",
            Finish::DeadLettered => "dead_lettered",
            Finish::Skipped => "skipped",
        }
    }
}

/// What an audit record says happened to its ids (its `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// CleverTap answered success: the profiles are marked for deletion.
    Deleted,
    /// CleverTap refused the id; its events went to the dead-letter topic.
    Rejected,
    /// CleverTap's 2xx answers for the id never said success; its events
    /// went to the dead-letter topic (reason `unconfirmed`).
    Unconfirmed,
    /// The ids were confirmed deleted shortly before (the recently-deleted
    /// memory): these events finished without a request of their own.
    AlreadyDeleted,
}

impl AuditStatus {
    pub const ALL: [AuditStatus; 4] = [
        AuditStatus::Deleted,
        AuditStatus::Rejected,
        AuditStatus::Unconfirmed,
        AuditStatus::AlreadyDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Deleted => "deleted",
            AuditStatus::Rejected => "rejected",
            AuditStatus::Unconfirmed => "unconfirmed",
            AuditStatus::AlreadyDeleted => "already_deleted",
        }
    }
}

/// One owned partition as the status view shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    /// The offset the group coordinator last confirmed for this member.
    pub committed: Option<i64>,
    /// One past the last offset read.
    pub read_up_to: Option<i64>,
    /// What the next commit will carry: the oldest unfinished offset.
    pub committable: Option<i64>,
    /// Offsets read but held back behind the oldest unfinished event.
    pub held_back: i64,
    pub unfinished: usize,
    pub oldest_unfinished_offset: Option<i64>,
    pub oldest_unfinished_age_secs: Option<f64>,
}

/// Why a request is retried; the `reason` label of the retry metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    TooManyRequests,
    ServerError,
    Timeout,
    Connection,
    /// An answer the contract does not describe (a 3xx, a 418, ...).
    Unexpected,
    /// A 2xx that does not confirm the deletion ([`Verdict::Unconfirmed`]);
    /// retried `api.unconfirmed_retries` times.
    Unconfirmed,
}

impl RetryReason {
    pub const ALL: [RetryReason; 6] = [
        RetryReason::TooManyRequests,
        RetryReason::ServerError,
        RetryReason::Timeout,
        RetryReason::Connection,
        RetryReason::Unexpected,
        RetryReason::Unconfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::TooManyRequests => "too_many_requests",
            RetryReason::ServerError => "server_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::Unexpected => "unexpected",
            RetryReason::Unconfirmed => "unconfirmed",
        }
    }
}

/// Why a message went to the dead-letter topic. The `reason` header and the
/// `reason` metric label use [`DeadLetterReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// No payload (a tombstone) or an empty one.
    Empty,
    TooLarge,
    NotUtf8,
    NotJson,
    /// Neither an identity nor a guid is present.
    NoId,
    /// An id is empty, not a string, or the id field has the wrong type.
    InvalidId,
    IdTooLong,
    TooManyIds,
    /// No region in the event and no `default_region`.
    NoRegion,
    /// A region with no configured account.
    UnknownRegion,
    /// CleverTap answered 400 for this id alone.
    ApiRejected,
    /// CleverTap's 2xx answers for this id alone never said success.
    Unconfirmed,
    /// The type is missing or not a string, but the event carries ids.
    MissingType,
    /// The type, region or an id key (or a key on the way to one) appears
    /// twice in one object; a header the decoder reads appears twice; a
    /// field's header and pointer disagree.
    DuplicateKey,
    /// `event.format = "cloudevents"`: neither a structured-mode
    /// (`content-type: application/cloudevents…`) nor a binary-mode
    /// (`ce_specversion` header) CloudEvent.
    NotCloudevent,
    /// A CloudEvent the decoder cannot use: a required attribute missing,
    /// empty or not a string, a specversion other than 1.0, an event format
    /// or data content type other than JSON, data that is not a JSON object,
    /// invalid `data_base64`.
    InvalidCloudevent,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 16] = [
        DeadLetterReason::Empty,
        DeadLetterReason::TooLarge,
        DeadLetterReason::NotUtf8,
        DeadLetterReason::NotJson,
        DeadLetterReason::NoId,
        DeadLetterReason::InvalidId,
        DeadLetterReason::IdTooLong,
        DeadLetterReason::TooManyIds,
        DeadLetterReason::NoRegion,
        DeadLetterReason::UnknownRegion,
        DeadLetterReason::ApiRejected,
        DeadLetterReason::Unconfirmed,
        DeadLetterReason::MissingType,
        DeadLetterReason::DuplicateKey,
        DeadLetterReason::NotCloudevent,
        DeadLetterReason::InvalidCloudevent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Empty => "empty",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::NotUtf8 => "not_utf8",
            DeadLetterReason::NotJson => "not_json",
            DeadLetterReason::NoId => "no_id",
            DeadLetterReason::InvalidId => "invalid_id",
            DeadLetterReason::IdTooLong => "id_too_long",
            DeadLetterReason::TooManyIds => "too_many_ids",
            DeadLetterReason::NoRegion => "no_region",
            DeadLetterReason::UnknownRegion => "unknown_region",
            DeadLetterReason::ApiRejected => "api_rejected",
            DeadLetterReason::Unconfirmed => "unconfirmed",
            DeadLetterReason::MissingType => "missing_type",
            DeadLetterReason::DuplicateKey => "duplicate_key",
            DeadLetterReason::NotCloudevent => "not_cloudevent",
            DeadLetterReason::InvalidCloudevent => "invalid_cloudevent",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a write failed: the `reason` label of `kafka_write_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// Larger than the producer or the topic accepts.
    TooLarge,
    /// The topic does not exist (and is not created automatically).
    UnknownTopic,
    /// The credentials may not write to the topic (or the cluster).
    Authorization,
    /// The broker refuses the record itself; retrying it as is cannot help.
    InvalidRecord,
    /// The producer hit a fatal error (idempotence broken): only a restart
    /// of the process gives a new one.
    ProducerFatal,
    /// Anything else: timeouts, leader changes, brokers down.
    Transient,
}

impl WriteFailure {
    pub const ALL: [WriteFailure; 6] = [
        WriteFailure::TooLarge,
        WriteFailure::UnknownTopic,
        WriteFailure::Authorization,
        WriteFailure::InvalidRecord,
        WriteFailure::ProducerFatal,
        WriteFailure::Transient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WriteFailure::TooLarge => "too_large",
            WriteFailure::UnknownTopic => "unknown_topic",
            WriteFailure::Authorization => "authorization",
            WriteFailure::InvalidRecord => "invalid_record",
            WriteFailure::ProducerFatal => "producer_fatal",
            WriteFailure::Transient => "transient",
        }
    }
}

/// Which kind of secret file was re-read; the `secret` label of
/// `secret_reloads_total` (never its path or value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    RegionPasscode,
    AuditSalt,
    /// A librdkafka property of `kafka.secret_properties_files`.
    KafkaProperty,
}

impl SecretKind {
    pub const ALL: [SecretKind; 3] = [
        SecretKind::RegionPasscode,
        SecretKind::AuditSalt,
        SecretKind::KafkaProperty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::RegionPasscode => "region_passcode",
            SecretKind::AuditSalt => "audit_salt",
            SecretKind::KafkaProperty => "kafka_property",
        }
    }
}

/// What re-reading a changed secret file came to; the `result` label of
/// `secret_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new value is used for new requests and records.
    Success,
    /// The file cannot be read or its value would be refused at start-up:
    /// the old value stays in use.
    Failure,
    /// A Kafka secret: librdkafka keeps the value it was created with, so
    /// the new one applies after a restart.
    RestartRequired,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Success,
        ReloadResult::Failure,
        ReloadResult::RestartRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
            ReloadResult::RestartRequired => "restart_required",
        }
    }
}
