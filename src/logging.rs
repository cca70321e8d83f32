//! tracing set-up: human-readable lines by default, JSON with `log.format = "json"`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests).
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // librdkafka's own logs come through `rdkafka` targets; keep them at warn.
        EnvFilter::new(format!("{level},rdkafka=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
