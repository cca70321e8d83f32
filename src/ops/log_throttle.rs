//! Kafka connection problems logged as state changes, not per callback.
//!
//! With the brokers unreachable, librdkafka reports the same failure many
//! times a second (an error event per reconnect attempt, a consumer error per
//! poll, a log line per broker thread). [`KafkaLinkLog`] turns that into:
//! one ERROR line when every broker is down (with the cause, e.g.
//! `Connection refused`), one WARN line at most every minute while it lasts
//! (cause, duration, errors since the last line), and one INFO line when a
//! broker is reachable again. Other errors are logged the first time and then
//! at most once a minute per kind, with how often they repeated.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How often a lasting outage or a repeating error is logged again.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

pub struct KafkaLinkLog {
    /// `consumer`, `producer`, `replay consumer`, ... (a log field).
    client: &'static str,
    every: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    down: Option<Outage>,
    /// The latest connection failure librdkafka described.
    cause: Option<String>,
    /// Other errors by kind: when last logged, and how often since.
    repeats: HashMap<String, (Instant, u64)>,
}

struct Outage {
    since: Instant,
    last_report: Instant,
    /// Error events since the last line.
    errors: u64,
}

/// Errors that mean "cannot reach a broker": they feed the cause and are
/// counted while everything is down.
fn is_connection_error(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
        )
    )
}

/// A librdkafka log line without its thread prefix:
/// `[thrd:host:9092/bootstrap]: host:9092/bootstrap: Connect to ...` -> from `host:9092/...`.
pub fn without_thread(message: &str) -> &str {
    match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(message, |(_, m)| m),
        None => message,
    }
}

impl KafkaLinkLog {
    pub fn new(client: &'static str) -> Self {
        Self::with_interval(client, REPORT_EVERY)
    }

    /// With another reporting interval (tests).
    pub fn with_interval(client: &'static str, every: Duration) -> Self {
        KafkaLinkLog {
            client,
            every,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every broker is down now.
    pub fn is_down(&self) -> bool {
        self.lock().down.is_some()
    }

    /// The latest connection failure librdkafka described, if any.
    pub fn cause(&self) -> Option<String> {
        self.lock().cause.clone()
    }

    /// From `ClientContext::error`.
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_down(reason);
        } else if is_connection_error(code) {
            let mut inner = self.lock();
            if !reason.is_empty() {
                inner.cause = Some(without_thread(reason).to_string());
            }
            if inner.down.is_some() {
                drop(inner);
                self.count_while_down();
            } else {
                drop(inner);
                // One broker of several, or the moment before all are down.
                self.repeated(
                    &format!("{code:?}"),
                    &format!("{error}"),
                    reason,
                    "Kafka broker connection failed",
                );
            }
        } else {
            self.repeated(
                &format!("{code:?}"),
                &format!("{error}"),
                reason,
                "Kafka client error",
            );
        }
    }

    /// From a consumer's `poll` returning an error. Connection errors repeat
    /// what the error callback said and are only counted.
    pub fn consumer_error(&self, error: &KafkaError) {
        if is_connection_error(error.rdkafka_error_code()) {
            if self.is_down() {
                self.count_while_down();
            }
            return;
        }
        self.repeated(
            &format!("poll {:?}", error.rdkafka_error_code()),
            &error.to_string(),
            "",
            "consumer error",
        );
    }

    /// From `ClientContext::log`: connection failures (`FAIL` at warning
    /// level or worse) become the cause, reported by the state lines; the
    /// rest is logged as rdkafka logs librdkafka's lines by default.
    pub fn librdkafka_log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if fac == "FAIL" && serious {
            self.lock().cause = Some(without_thread(message).to_string());
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {} {}", fac, message)
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {} {}", fac, message)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {} {}", fac, message)
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {} {}", fac, message)
            }
        }
    }

    fn all_down(&self, reason: &str) {
        let mut inner = self.lock();
        if inner.down.is_some() {
            drop(inner);
            self.count_while_down();
            return;
        }
        let now = Instant::now();
        inner.down = Some(Outage {
            since: now,
            last_report: now,
            errors: 0,
        });
        let cause = inner.cause.clone().unwrap_or_else(|| "unknown".to_string());
        tracing::error!(
            client = self.client,
            %reason,
            %cause,
            "all Kafka brokers are down; retrying (logged again every {} s while it lasts)",
            self.every.as_secs()
        );
    }

    fn count_while_down(&self) {
        if let Some(outage) = self.lock().down.as_mut() {
            outage.errors += 1;
        }
        self.tick();
    }

    /// Logs "still down" when a lasting outage is due for a line and errors
    /// came since the last one. Called on every error and from the
    /// statistics callback.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let cause = inner.cause.clone().unwrap_or_else(|| "unknown".to_string());
        let Some(outage) = inner.down.as_mut() else {
            return;
        };
        // No error since the last line: the client is not failing, only idle
        // (a producer with nothing to send may not reconnect at once).
        if outage.last_report.elapsed() < self.every || outage.errors == 0 {
            return;
        }
        let down_for = outage.since.elapsed().as_secs();
        let errors = std::mem::take(&mut outage.errors);
        outage.last_report = Instant::now();
        tracing::warn!(
            client = self.client,
            %cause,
            down_for_s = down_for,
            errors,
            "all Kafka brokers are still down after {down_for} s"
        );
    }

    /// A broker is reachable (statistics show one UP, partitions assigned).
    pub fn up(&self) {
        let mut inner = self.lock();
        let Some(outage) = inner.down.take() else {
            return;
        };
        inner.cause = None;
        tracing::info!(
            client = self.client,
            down_for_s = outage.since.elapsed().as_secs(),
            "Kafka brokers reachable again"
        );
    }

    /// Logs an error the first time, then at most once per interval with
    /// how often it repeated meanwhile.
    fn repeated(&self, kind: &str, error: &str, reason: &str, message: &str) {
        let mut inner = self.lock();
        let now = Instant::now();
        let entry = inner.repeats.get_mut(kind);
        let repeated = match entry {
            Some((last, count)) if last.elapsed() < self.every => {
                *count += 1;
                return;
            }
            Some((last, count)) => {
                *last = now;
                std::mem::take(count)
            }
            None => {
                inner.repeats.insert(kind.to_string(), (now, 0));
                0
            }
        };
        drop(inner);
        if repeated == 0 {
            tracing::warn!(client = self.client, %error, %reason, "{message}");
        } else {
            tracing::warn!(
                client = self.client,
                %error,
                %reason,
                repeated,
                "{message} (repeated {repeated} times since the last line)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
        }
    }

    fn transport() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
    }

    fn all_down() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    }

    #[test]
    fn an_outage_is_down_still_down_and_up() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let log = KafkaLinkLog::with_interval("consumer", Duration::from_millis(200));
        tracing::subscriber::with_default(subscriber, || {
            let refused = "[thrd:b:9/bootstrap]: b:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused";
            log.librdkafka_log(RDKafkaLogLevel::Error, "FAIL", refused);
            log.client_error(&all_down(), "1/1 brokers are down");
            for _ in 0..1000 {
                log.client_error(&transport(), refused);
                log.client_error(&all_down(), "1/1 brokers are down");
                log.consumer_error(&KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AllBrokersDown,
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
            log.tick();
            log.tick();
            log.up();
            log.up();
            for _ in 0..100 {
                log.client_error(
                    &KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition),
                    "topic x",
                );
            }
        });
        let text = lines.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].contains("all Kafka brokers are down")
                && lines[0].contains("Connection refused"),
            "{text}"
        );
        assert!(
            lines[1].contains("still down") && lines[1].contains("errors=3000"),
            "{text}"
        );
        assert!(lines[2].contains("reachable again"), "{text}");
        assert!(lines[3].contains("Kafka client error"), "{text}");
    }
}
