//! Command-line interface and exit codes: 0 clean stop, 1 fatal error,
//! 2 configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::health::Health;
use crate::metrics::Metrics;

pub const EXIT_FATAL: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;

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
        /// Path of the TOML configuration file.
        #[arg(long, short)]
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
    },
    /// Move dead letters back to their source topic, in Kafka transactions.
    ReplayDlq {
        /// Path of the TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        options: crate::replay::ReplayOptions,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load_or_exit(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("clevertap-deleter: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn main_with(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => match load_or_exit(config.as_deref()) {
            Ok(c) => {
                print!("{}", config::redacted_toml(&c.settings));
                eprintln!(
                    "configuration OK: {} region(s), topics {:?}",
                    c.regions.len(),
                    c.settings.kafka.topics
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Demo {
            events,
            rate,
            fail_rate,
            throttle_rate,
            latency_ms,
            listen,
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
            crate::logging::init("human", "error");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let opts = crate::demo::DemoOptions {
                events,
                rate,
                fail_rate,
                throttle_rate,
                latency: std::time::Duration::from_millis(latency_ms),
                listen,
                partitions: 6,
            };
            match runtime.block_on(crate::demo::run(opts)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_FATAL),
                Err(e) => {
                    eprintln!("clevertap-deleter demo: {e}");
                    ExitCode::from(EXIT_FATAL)
                }
            }
        }
        Command::ReplayDlq { config, options } => match load_or_exit(config.as_deref()) {
            Ok(cfg) => crate::replay::main(&cfg, &options),
            Err(code) => code,
        },
        Command::Run { config, dry_run } => {
            let mut cfg = match load_or_exit(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            cfg.settings.api.dry_run |= dry_run;
            crate::logging::init(&cfg.settings.log.format, &cfg.settings.log.level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(run_daemon(cfg))
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

async fn run_daemon(cfg: Config) -> ExitCode {
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let api = match crate::api::client_for(&cfg) {
        Ok(api) => api,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTPS client");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let (addr, _server) = match crate::server::serve(cfg.listen, metrics.clone(), health.clone())
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
    match crate::pipeline::run(cfg, api, metrics, health, shutdown_signal()).await {
        Ok(summary) => {
            tracing::info!(unfinished = summary.unfinished_at_exit, "clean shutdown");
            ExitCode::SUCCESS
        }
        Err(crate::pipeline::PipelineError::KafkaConfig(e)) => {
            tracing::error!(error = %e, "invalid Kafka configuration");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopping on a fatal error");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
