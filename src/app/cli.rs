//! Command-line interface and exit codes: 0 clean stop, 1 fatal error,
//! 2 configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

pub use crate::app::exit_code::{EXIT_CONFIG, EXIT_FATAL};
pub use crate::ops::logging::log_warnings;

#[derive(Parser, Debug)]
#[command(
    name = "clevertap-deleter",
    version,
    about = "Deletes CleverTap user profiles for Kafka \"user-deleted\" events, at-least-once.",
    long_about = "Deletes CleverTap user profiles for Kafka \"user-deleted\" events. Offsets are \
committed only after CleverTap confirmed every deletion up to them.\n\nConfiguration: a TOML file \
plus environment overrides CLEVERTAP_DELETER__SECTION__KEY (e.g. CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// Path of the TOML configuration file (without it, the environment alone).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Do everything but the API call (which is logged and counted as a success).
        #[arg(long)]
        dry_run: bool,
    },
    /// Run everything on this machine: an in-process Kafka and fake CleverTap
    /// API, synthetic events, the real pipeline, then a summary.
    Demo {
        /// How many events to produce.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Events per second to produce (0: all at once).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Share of API calls the fake answers with a 5xx (0 up to, not including, 1).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Share of API calls the fake answers with 429 (0 up to, not including, 1).
        #[arg(long, default_value_t = 0.0)]
        throttle_rate: f64,
        /// Latency of the fake API in milliseconds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// Where /metrics, /healthz and /readyz are served during the demo.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// Partitions of the demo topic.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
        partitions: i32,
        /// After the summary, keep serving /metrics and /status until Ctrl-C.
        #[arg(long)]
        keep_serving: bool,
        /// Produce CloudEvents (structured and binary mode mixed) and read
        /// them with `event.format = "cloudevents"`.
        #[arg(long)]
        cloudevents: bool,
    },
    /// Move dead letters back to their source topic, in Kafka transactions.
    ReplayDlq {
        /// Path of the TOML configuration file (without it, the environment alone).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        options: crate::app::replay::ReplayOptions,
    },
    /// Show a running daemon's state: partitions (committed, read, held back
    /// behind which event), regions (held, in flight, limit), writers. Reads
    /// GET /status. Exit 0 when it answered, 1 when it cannot be reached.
    Status {
        /// Base URL of the daemon's metrics/health listener.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print it with secrets redacted. The
    /// Kafka clients are built (not connected), so librdkafka checks every
    /// property. Exit 0 valid, 2 invalid.
    CheckConfig {
        /// Path of the TOML configuration file to check. Without it, the
        /// configuration comes from the environment alone
        /// (CLEVERTAP_DELETER__SECTION__KEY variables, which also override the
        /// file's values).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also check against the real systems, changing nothing: the brokers
        /// answer with the configured security, the topics exist, the group's
        /// offsets can be read, each region's endpoint answers over TLS. One
        /// line per check on stderr; exit 2 if any fails.
        #[arg(long)]
        online: bool,
        /// With --online: how long each check waits, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout: u64,
    },
}

fn load_or_exit(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("clevertap-deleter: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Loads the configuration and builds the Kafka clients offline, so a
/// property librdkafka refuses is a configuration error (exit 2) before
/// anything starts; librdkafka's configuration warnings join the others.
fn load_and_check_or_exit(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let mut config = load_or_exit(path)?;
    match crate::app::pipeline::check_clients_offline(&config) {
        Ok(warnings) => {
            config.warnings.extend(warnings);
            Ok(config)
        }
        Err(e) => {
            eprintln!("clevertap-deleter: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn check_config(path: Option<&std::path::Path>, online: bool, timeout: u64) -> ExitCode {
    let c = match load_and_check_or_exit(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for warning in &c.warnings {
        eprintln!("clevertap-deleter: warning: {warning}");
    }
    print!("{}", config::redacted_toml(&c.settings));
    eprintln!(
        "configuration OK: {} region(s), topics {:?}",
        c.regions.len(),
        c.settings.kafka.topics
    );
    if !online {
        return ExitCode::SUCCESS;
    }
    let checks = crate::app::online::run(&c, std::time::Duration::from_secs(timeout));
    for check in &checks {
        eprintln!("{check}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.status == crate::app::online::Status::Fail)
        .count();
    if failed == 0 {
        eprintln!("online checks OK");
        ExitCode::SUCCESS
    } else {
        eprintln!("online checks: {failed} failed");
        ExitCode::from(EXIT_CONFIG)
    }
}

/// `status`: fetches `GET {url}/status` and prints it.
fn status(url: &str, json: bool) -> ExitCode {
    let url = format!("{}/status", url.trim_end_matches('/'));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clevertap-deleter: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let fetched = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let answer = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!("answered {}", answer.status()));
        }
        answer.text().await.map_err(|e| e.to_string())
    });
    let body = match fetched {
        Ok(body) => body,
        Err(e) => {
            eprintln!("clevertap-deleter: cannot read {url}: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<crate::ops::status::StatusReport>(&body) {
        Ok(report) => {
            print!("{}", crate::ops::status::render_table(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clevertap-deleter: {url} did not answer a status report: {e}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Status { url, json } => status(&url, json),
        Command::CheckConfig {
            config,
            online,
            timeout,
        } => check_config(config.as_deref(), online, timeout),
        Command::Demo {
            events,
            rate,
            fail_rate,
            throttle_rate,
            latency_ms,
            listen,
            partitions,
            keep_serving,
            cloudevents,
        } => {
            for (name, v) in [
                ("--fail-rate", fail_rate),
                ("--throttle-rate", throttle_rate),
            ] {
                if !(0.0..1.0).contains(&v) {
                    eprintln!("clevertap-deleter: {name} must be at least 0 and below 1");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            // Retries are shown in the progress line; logs only for errors.
            crate::ops::logging::init("human", "error");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let opts = crate::app::demo::DemoOptions {
                events,
                rate,
                fail_rate,
                throttle_rate,
                latency: std::time::Duration::from_millis(latency_ms),
                listen,
                partitions,
                keep_serving,
                cloudevents,
            };
            match runtime.block_on(crate::app::demo::run(opts)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_FATAL),
                Err(e) => {
                    eprintln!("clevertap-deleter demo: {e}");
                    ExitCode::from(EXIT_FATAL)
                }
            }
        }
        Command::ReplayDlq { config, options } => match load_or_exit(config.as_deref()) {
            Ok(cfg) => crate::app::replay::main(&cfg, &options),
            Err(code) => code,
        },
        Command::Run { config, dry_run } => {
            let mut cfg = match load_and_check_or_exit(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            cfg.settings.api.dry_run |= dry_run;
            crate::ops::logging::init(&cfg.settings.log.format, &cfg.settings.log.level);
            log_warnings(&cfg);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let code = runtime.block_on(run_daemon(cfg));
            // A consumer thread still closing (see pipeline::run) must not
            // hold the exit: dropping the runtime would wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// SIGHUP re-reads the secret files at once (they are also re-read every
/// `secrets.reload_interval_ms`). Without a handler it would end the process
/// (exit 129, no drain, no commit).
#[cfg(unix)]
fn reload_on_sighup(reload: crate::ops::secret_reload::ReloadTrigger) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received; re-reading the secret files");
                    reload.reload_now();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; it would end the process"),
    }
}

async fn run_daemon(cfg: Config) -> ExitCode {
    let reload = crate::ops::secret_reload::ReloadTrigger::default();
    #[cfg(unix)]
    reload_on_sighup(reload.clone());
    let kafka_settings = cfg.settings.kafka.clone();
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let api = match crate::clevertap::api::client_for(&cfg) {
        Ok(api) => api,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTPS client");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let (addr, _server) = match crate::ops::server::serve(
        cfg.listen,
        metrics.clone(),
        health.clone(),
    )
    .await
    {
        Ok(bound) => bound,
        Err(e) => {
            tracing::error!(listen = %cfg.listen, error = %e, "cannot bind the metrics/health listener");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    tracing::info!(
        listen = %addr,
        regions = cfg.regions.len(),
        topics = ?cfg.settings.kafka.topics,
        group = %cfg.settings.kafka.group_id,
        "clevertap-deleter started"
    );
    let stopped = shutdown_signal();
    match crate::app::pipeline::run(cfg, api, metrics, health, stopped, reload).await {
        Ok(summary) => {
            tracing::info!(unfinished = summary.unfinished_at_exit, "clean shutdown");
            ExitCode::SUCCESS
        }
        Err(crate::app::pipeline::PipelineError::KafkaConfig(e)) => {
            // librdkafka's text may carry a property's value: never a secret.
            let e = kafka_settings.client_error(&e);
            tracing::error!(error = %e, "invalid Kafka configuration");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopping on a fatal error");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
