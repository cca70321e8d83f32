//! tracing set-up: human-readable lines by default, JSON with `log.format = "json"`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests).
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The rdkafka crate logs under `rdkafka::*`, and forwards librdkafka's
        // own log lines under the `librdkafka` target; keep both at warn.
        EnvFilter::new(format!("{level},rdkafka=warn,librdkafka=warn"))
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal, not in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Logs the configuration's warnings, once logging is set up.
pub fn log_warnings(config: &crate::config::Config) {
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration warning");
    }
}
