//! Prometheus metrics. Labels are bounded: regions, kinds, outcomes, reasons,
//! HTTP statuses, partitions; never ids or raw error text.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::ids::IdKind;
use crate::domain::outcome::{
    AuditStatus, DeadLetterReason, Finish, ReloadResult, RetryReason, SecretKind, WriteFailure,
};

const PREFIX: &str = "clevertap_deleter";

/// The git commit this binary was built from (build.rs), or "unknown".
pub const GIT_COMMIT: &str = env!("CLEVERTAP_DELETER_GIT_COMMIT");

/// `status` values of `api_requests_total` besides [`API_STATUS_CODES`]:
/// the classes of other codes and the transport errors. With those codes,
/// every value is created at start for every region, so the first 429 or
/// 5xx of a region is an increase from 0.
const OTHER_API_STATUSES: [&str; 9] = [
    "2xx_other",
    "3xx_other",
    "4xx_other",
    "5xx_other",
    "other",
    "timeout",
    "connect_error",
    "transport_error",
    "invalid_request",
];

/// The statuses that hold a region (`region_auth_failures_total`).
const AUTH_FAILURE_STATUSES: [&str; 4] = ["401", "403", "404", "invalid_request"];

/// HTTP statuses that get their own `status` label value in
/// `api_requests_total`: the answers the contract documents, and the usual
/// proxy and gateway ones.
pub const API_STATUS_CODES: [u16; 12] =
    [200, 204, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504];

/// The `status` label of `api_requests_total` for an HTTP status: the code
/// itself when it is one of [`API_STATUS_CODES`], else its class
/// (`2xx_other` .. `5xx_other`), else `other`. A misbehaving endpoint cannot
/// create more than these 17 series per region (with the transport errors).
pub fn api_status_label(status: u16) -> &'static str {
    const LABELS: [&str; 12] = [
        "200", "204", "400", "401", "403", "404", "408", "429", "500", "502", "503", "504",
    ];
    if let Some(i) = API_STATUS_CODES.iter().position(|c| *c == status) {
        return LABELS[i];
    }
    match status {
        200..=299 => "2xx_other",
        300..=399 => "3xx_other",
        400..=499 => "4xx_other",
        500..=599 => "5xx_other",
        _ => "other",
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_finished: IntCounterVec,
    pub ids_deleted: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub api_request_duration: HistogramVec,
    pub api_retries: IntCounterVec,
    pub api_in_flight: IntGaugeVec,
    pub api_backing_off: IntGaugeVec,
    pub api_concurrency_limit: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub committed_offset: IntGaugeVec,
    pub commits: IntCounterVec,
    pub events_in_memory: IntGauge,
    pub oldest_unfinished_age: Gauge,
    pub consumer_paused: IntGauge,
    pub partitions_assigned: IntGauge,
    pub rebalances: IntCounterVec,
    pub region_held: IntGaugeVec,
    pub region_auth_failures: IntCounterVec,
    pub kafka_connected: IntGauge,
    pub event_to_deletion: Histogram,
    pub late_acks_dropped: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub audit_records: IntCounterVec,
    pub redelivered_events: IntCounter,
    pub offsets_held_back: IntGaugeVec,
    pub kafka_write_failures: IntCounterVec,
    pub kafka_writes_held: IntGaugeVec,
    pub dead_letters_truncated: IntCounter,
    pub records_lost: IntCounterVec,
    pub account_concurrency_share: IntGaugeVec,
    pub secret_reloads: IntCounterVec,
    pub dedup_warmed_ids: IntGauge,
    pub dedup_warm_failures: IntCounter,
    pub dead_letters_found_written: IntCounter,
}

/// The writers of `kafka_write_failures_total` and `kafka_writes_held`.
pub const KAFKA_WRITERS: [&str; 2] = ["dead_letter", "audit"];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(name, help), labels).expect("valid metric")
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(opts(name, help), labels).expect("valid metric")
        };

        let m = Metrics {
            events_consumed: reg!(counter_vec(
                "events_consumed_total",
                "Messages read from the source topics.",
                &["topic"]
            )),
            events_finished: reg!(counter_vec(
                "events_finished_total",
                "Events finished, by outcome: deleted, deduplicated, dead_lettered, skipped.",
                &["outcome"]
            )),
            ids_deleted: reg!(counter_vec(
                "ids_deleted_total",
                "Ids CleverTap confirmed marked for deletion.",
                &["region", "kind"]
            )),
            api_requests: reg!(counter_vec(
                "api_requests_total",
                "Delete User Profile requests by region and HTTP status (200, 204, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504, else 2xx_other..5xx_other or other; or timeout, connect_error, transport_error).",
                &["region", "status"]
            )),
            api_request_duration: reg!(HistogramVec::new(
                HistogramOpts::new("api_request_duration_seconds", "Delete request latency.")
                    .namespace(PREFIX)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
                    ]),
                &["region"]
            )
            .expect("valid metric")),
            api_retries: reg!(counter_vec(
                "api_retries_total",
                "Requests that will be retried, by region and reason.",
                &["region", "reason"]
            )),
            api_in_flight: reg!(gauge_vec(
                "api_in_flight_requests",
                "Requests in flight per region (account).",
                &["region"]
            )),
            api_backing_off: reg!(gauge_vec(
                "api_batches_backing_off",
                "Batches per region waiting out a retry backoff after a 5xx, a timeout or no connection; the region's first success after an outage ends their wait.",
                &["region"]
            )),
            api_concurrency_limit: reg!(gauge_vec(
                "api_concurrency_limit",
                "Current adaptive concurrency limit per region (account).",
                &["region"]
            )),
            dead_letters: reg!(counter_vec(
                "dead_letters_total",
                "Events written to the dead-letter topic and acknowledged, by reason.",
                &["reason"]
            )),
            committed_offset: reg!(gauge_vec(
                "committed_offset",
                "Last offset committed to the consumer group, per partition.",
                &["topic", "partition"]
            )),
            commits: reg!(counter_vec(
                "commits_total",
                "Offset commits by result (success, failure).",
                &["result"]
            )),
            events_in_memory: reg!(IntGauge::with_opts(opts(
                "events_in_memory",
                "Unfinished events held in memory."
            ))
            .expect("valid metric")),
            oldest_unfinished_age: reg!(Gauge::with_opts(opts(
                "oldest_unfinished_event_age_seconds",
                "Time since the oldest unfinished event was read (0 when none)."
            ))
            .expect("valid metric")),
            consumer_paused: reg!(IntGauge::with_opts(opts(
                "consumer_paused",
                "1 while consumption is held because too many events are in memory (or paused for shutdown)."
            ))
            .expect("valid metric")),
            partitions_assigned: reg!(IntGauge::with_opts(opts(
                "partitions_assigned",
                "Partitions currently assigned to this member."
            ))
            .expect("valid metric")),
            rebalances: reg!(counter_vec(
                "rebalances_total",
                "Rebalance callbacks by kind (assign, revoke).",
                &["kind"]
            )),
            region_held: reg!(gauge_vec(
                "region_held",
                "1 while a region's deletions are held because CleverTap answers 401/403/404.",
                &["region"]
            )),
            region_auth_failures: reg!(counter_vec(
                "region_auth_failures_total",
                "401/403/404 answers by region and status.",
                &["region", "status"]
            )),
            kafka_connected: reg!(IntGauge::with_opts(opts(
                "kafka_connected",
                "1 while the consumer reaches the brokers."
            ))
            .expect("valid metric")),
            event_to_deletion: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "event_to_deletion_seconds",
                    "Time from an event's Kafka timestamp to the confirmation of its deletion."
                )
                .namespace(PREFIX)
                .buckets(vec![
                    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                    14400.0, 21600.0, 43200.0, 86400.0
                ])
            )
            .expect("valid metric")),
            late_acks_dropped: reg!(IntCounter::with_opts(opts(
                "late_acks_dropped_total",
                "Acknowledgements dropped because their partition was revoked first (the new owner redoes them)."
            ))
            .expect("valid metric")),
            consumer_lag: reg!(gauge_vec(
                "consumer_lag_messages",
                "Messages between the consumer's position and the partition's end, per assigned partition (from assignment on; refreshed every statistics.interval.ms).",
                &["topic", "partition"]
            )),
            audit_records: reg!(counter_vec(
                "audit_records_total",
                "Audit records acknowledged by the broker, by status (deleted, rejected, unconfirmed, already_deleted).",
                &["status"]
            )),
            redelivered_events: reg!(IntCounter::with_opts(opts(
                "redelivered_events_total",
                "Records this process read a second time (after a rebalance gave the partition back): duplicate deliveries."
            ))
            .expect("valid metric")),
            offsets_held_back: reg!(gauge_vec(
                "offsets_held_back",
                "Offsets read but not committable per partition: how far reading ran ahead of the oldest unfinished event (0 when all finished).",
                &["topic", "partition"]
            )),
            kafka_write_failures: reg!(counter_vec(
                "kafka_write_failures_total",
                "Failed dead-letter and audit writes, by writer and reason (too_large, unknown_topic, authorization, invalid_record, transient).",
                &["writer", "reason"]
            )),
            kafka_writes_held: reg!(gauge_vec(
                "kafka_writes_held",
                "Dead-letter or audit records waiting on an error that needs an operator (missing topic, no authorization): their partitions do not commit.",
                &["writer"]
            )),
            dead_letters_truncated: reg!(IntCounter::with_opts(opts(
                "dead_letters_truncated_total",
                "Dead letters written as a truncated copy because the whole record was larger than the broker accepts."
            ))
            .expect("valid metric")),
            records_lost: reg!(counter_vec(
                "records_lost_total",
                "Records removed by retention (or DeleteRecords) before this group read them: deletions lost for good.",
                &["topic", "partition"]
            )),
            account_concurrency_share: reg!(gauge_vec(
                "account_concurrency_share",
                "This replica's share of the account's concurrency budget (regions.NAME.account_concurrency x owned partitions / all partitions, rounded down, at least 1 while it owns any; 0 when it owns none).",
                &["region"]
            )),
            secret_reloads: reg!(counter_vec(
                "secret_reloads_total",
                "Secret files re-read after a change (or SIGHUP), by kind (region_passcode, audit_salt, kafka_property) and result (success; failure: the old value stays; restart_required: the new value applies after a restart).",
                &["secret", "result"]
            )),
            dedup_warmed_ids: reg!(IntGauge::with_opts(opts(
                "dedup_warmed_ids",
                "Ids remembered as deleted at start, read back from below the committed offsets (dedup.warm_events); 0 on a first start, with other decoding settings, or when the read failed."
            ))
            .expect("valid metric")),
            dedup_warm_failures: reg!(IntCounter::with_opts(opts(
                "dedup_warm_failures_total",
                "Start-up read-backs of the recent past that failed or timed out (the daemon then starts with an empty memory; the log says why)."
            ))
            .expect("valid metric")),
            dead_letters_found_written: reg!(IntCounter::with_opts(opts(
                "dead_letters_found_written_total",
                "Events read again after a restart whose dead letter the process before had already written (found by the start-up read-back): finished without writing it twice."
            ))
            .expect("valid metric")),
            registry: registry.clone(),
        };
        let build = IntGaugeVec::new(
            opts(
                "build_info",
                "Build information: version, git commit and librdkafka version; always 1.",
            ),
            &["version", "git_commit", "librdkafka_version"],
        )
        .expect("valid metric");
        registry.register(Box::new(build.clone())).expect("unique");
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_COMMIT, librdkafka.as_str()])
            .set(1);
        // process_resident_memory_bytes, process_cpu_seconds_total,
        // process_open_fds, process_max_fds, process_start_time_seconds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        m.preinitialize();
        m
    }

    /// Creates label sets that are known up front so they read 0 instead of
    /// being absent (absent series break rate() alerts).
    fn preinitialize(&self) {
        for f in Finish::ALL {
            self.events_finished.with_label_values(&[f.as_str()]);
        }
        for r in DeadLetterReason::ALL {
            self.dead_letters.with_label_values(&[r.as_str()]);
        }
        for r in ["success", "failure"] {
            self.commits.with_label_values(&[r]);
        }
        for s in AuditStatus::ALL {
            self.audit_records.with_label_values(&[s.as_str()]);
        }
        for secret in SecretKind::ALL {
            for result in ReloadResult::ALL {
                self.secret_reloads
                    .with_label_values(&[secret.as_str(), result.as_str()]);
            }
        }
        for k in ["assign", "revoke"] {
            self.rebalances.with_label_values(&[k]);
        }
        for w in KAFKA_WRITERS {
            self.kafka_writes_held.with_label_values(&[w]).set(0);
            for r in WriteFailure::ALL {
                self.kafka_write_failures
                    .with_label_values(&[w, r.as_str()]);
            }
        }
    }

    /// Per-region series, created at start so dashboards show every region.
    pub fn register_region(&self, region: &str) {
        for kind in IdKind::ALL {
            self.ids_deleted.with_label_values(&[region, kind.as_str()]);
        }
        for reason in RetryReason::ALL {
            self.api_retries
                .with_label_values(&[region, reason.as_str()]);
        }
        self.region_held.with_label_values(&[region]).set(0);
        self.account_concurrency_share
            .with_label_values(&[region])
            .set(0);
        self.api_in_flight.with_label_values(&[region]).set(0);
        self.api_backing_off.with_label_values(&[region]).set(0);
        self.api_request_duration.with_label_values(&[region]);
        for code in API_STATUS_CODES {
            self.api_requests
                .with_label_values(&[region, api_status_label(code)]);
        }
        for status in OTHER_API_STATUSES {
            self.api_requests.with_label_values(&[region, status]);
        }
        for status in AUTH_FAILURE_STATUSES {
            self.region_auth_failures
                .with_label_values(&[region, status]);
        }
    }

    /// Per-topic series, created when the consumer subscribes: a topic that
    /// has not delivered anything yet reads 0. Patterns (`^...`) are skipped.
    pub fn register_topics<S: AsRef<str>>(&self, topics: &[S]) {
        for topic in topics.iter().map(AsRef::as_ref) {
            if !topic.starts_with('^') {
                self.events_consumed.with_label_values(&[topic]);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix_and_preinitialized_series() {
        let m = Metrics::new();
        m.register_region("eu1");
        let text = m.render();
        assert!(
            text.contains("clevertap_deleter_events_finished_total{outcome=\"dead_lettered\"} 0")
        );
        assert!(
            text.contains("clevertap_deleter_ids_deleted_total{kind=\"guid\",region=\"eu1\"} 0")
        );
        assert!(text.contains(&format!(
            "clevertap_deleter_build_info{{git_commit=\"{GIT_COMMIT}\",librdkafka_version=\"{}\",version=\"{}\"}} 1",
            rdkafka::util::get_rdkafka_version().1,
            env!("CARGO_PKG_VERSION")
        )), "{text}");
        // The first 429 of a region and its first auth failure are
        // increases from 0, not new series.
        assert!(
            text.contains("clevertap_deleter_api_requests_total{region=\"eu1\",status=\"429\"} 0")
        );
        assert!(text.contains(
            "clevertap_deleter_region_auth_failures_total{region=\"eu1\",status=\"401\"} 0"
        ));
        let statuses = text
            .lines()
            .filter(|l| l.starts_with("clevertap_deleter_api_requests_total{region=\"eu1\""))
            .count();
        assert_eq!(statuses, 21, "the whole bounded status set");
        m.register_topics(&["user-deleted", "^pattern.*"]);
        let text = m.render();
        assert!(text.contains("clevertap_deleter_events_consumed_total{topic=\"user-deleted\"} 0"));
        assert!(!text.contains("pattern"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn exports_process_metrics() {
        let text = Metrics::new().render();
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            let value: f64 = value.parse().expect("a number");
            if name != "process_cpu_seconds_total" {
                assert!(value > 0.0, "{name} = {value}");
            }
        }
    }

    #[test]
    fn api_status_labels_are_a_bounded_set() {
        for code in API_STATUS_CODES {
            assert_eq!(api_status_label(code), code.to_string());
        }
        assert_eq!(api_status_label(201), "2xx_other");
        assert_eq!(api_status_label(302), "3xx_other");
        assert_eq!(api_status_label(413), "4xx_other");
        assert_eq!(api_status_label(599), "5xx_other");
        let labels: std::collections::HashSet<&str> =
            (0..=u16::MAX).map(api_status_label).collect();
        assert_eq!(labels.len(), API_STATUS_CODES.len() + 5, "{labels:?}");
    }
}
