//! Shared by the live tests (tests/live_metrics.rs, tests/live_prometheus.rs):
//! the compiled daemon as a child process, a Prometheus server as another,
//! what deploy/ asks of the daemon's metrics, and Prometheus text parsing.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::read;

pub const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");
pub const DASHBOARD: &str = "deploy/grafana/clevertap-deleter.json";
pub const ALERTS: &str = "deploy/prometheus/alerts.yaml";
pub const SERVICE_MONITOR: &str = "deploy/kubernetes/components/servicemonitor/servicemonitor.yaml";
pub const KEDA: &str = "deploy/kubernetes/components/keda/scaledobject.yaml";
const ENV_PREFIX: &str = "CLEVERTAP_DELETER__";

/// Metrics that deploy/ may use although the daemon does not export them,
/// with who does. Anything else a query names must be in the scrape.
pub const EXTERNAL_METRICS: [(&str, &str); 2] = [
    ("up", "Prometheus itself, per scrape target"),
    (
        "kube_pod_container_resource_limits",
        "kube-state-metrics (the memory panel's container limit)",
    ),
];

/// A tool the live tests need: its path, or a failure that says how to get
/// it. With `allow_skip_var` set to 1 the test is skipped instead (None),
/// saying so on stderr.
pub fn require_tool(name: &str, allow_skip_var: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var(allow_skip_var).as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED: `{name}` is not installed and {allow_skip_var}=1: this test did not run"
            );
            None
        }
        None => panic!(
            "`{name}` is not installed: apt-get install --no-install-recommends prometheus \
             (.ci/run does), or set {allow_skip_var}=1 to skip this test"
        ),
    }
}

// ---------------------------------------------------------------- the daemon

/// `clevertap-deleter run` as a child process; killed when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Writes `toml` (which must listen on `port`) to `dir` and starts the daemon.
    pub fn start(name: &str, dir: &Path, toml: &str, port: u16) -> Daemon {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{name}.stdout"))).unwrap())
            .stderr(File::create(&log).unwrap());
        for (key, _) in std::env::vars() {
            if key.starts_with(ENV_PREFIX) || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("spawn clevertap-deleter run");
        Daemon {
            name: name.to_string(),
            child: Some(child),
            port,
            log,
        }
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL, like a crashed pod: its /metrics disappears at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until `/metrics` answers 200; panics with the log otherwise.
    pub async fn wait_metrics(&mut self, client: &reqwest::Client, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "daemon {} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(r) = client.get(self.url("/metrics")).send().await {
                if r.status() == 200 {
                    return r.text().await.unwrap_or_default();
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} serves no /metrics after {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

// ---------------------------------------------------------------- Prometheus text

/// One family of a scrape: its type and the label names of its samples
/// (`le` of histogram buckets and `quantile` of summaries left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub labels: BTreeSet<String>,
    pub samples: usize,
}

/// Families of a Prometheus text scrape, by name.
pub fn families(scrape: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.entry(name.to_string()).or_default().kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = sample.strip_suffix(s)?;
                out.get(base)
                    .filter(|f| f.kind == "histogram" || f.kind == "summary")
                    .map(|_| base)
            })
            .unwrap_or(sample)
            .to_string();
        let entry = out.entry(family).or_default();
        entry.samples += 1;
        if line[name_end..].starts_with('{') {
            let labels = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
            for pair in split_labels(labels) {
                if let Some((k, _)) = pair.split_once('=') {
                    let k = k.trim();
                    if k != "le" && k != "quantile" {
                        entry.labels.insert(k.to_string());
                    }
                }
            }
        }
    }
    out
}

/// `a="x",b="y,z"` -> [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn split_labels(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

// ---------------------------------------------------------------- PromQL

const PROMQL_KEYWORDS: [&str; 10] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "NaN", "Inf",
];
/// Aggregation operators: `sum by (x) (...)` has no `(` right after `sum`.
const PROMQL_AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const PROMQL_GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, keywords, label names (inside `{}` and after `by`, `on`, ...),
/// durations, numbers or Grafana variables (`$region`, `$__rate_interval`).
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Skips from an opening bracket to after its match (quotes respected).
    let skip_group = |j: usize, open: char, close: char| {
        let (mut depth, mut k, mut quote) = (0, j, None::<char>);
        while k < chars.len() {
            let c = chars[k];
            match quote {
                Some(_) if c == '\\' => k += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return k + 1;
                    }
                }
                None => {}
            }
            k += 1;
        }
        k
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != c {
                if chars[k] == '\\' {
                    k += 1;
                }
                k += 1;
            }
            i = k + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}');
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit())
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if PROMQL_GROUPING.contains(&word.as_str()) {
                if next < chars.len() && chars[next] == '(' {
                    i = skip_group(next, '(', ')');
                }
            } else if word == "offset" {
                // The duration after it.
                let mut k = next;
                while k < chars.len() && (chars[k].is_ascii_alphanumeric() || chars[k] == '-') {
                    k += 1;
                }
                i = k;
            } else if PROMQL_KEYWORDS.contains(&word.as_str())
                || PROMQL_AGGREGATIONS.contains(&word.as_str())
                || (next < chars.len() && chars[next] == '(')
            {
                // A keyword or a function name.
            } else {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The values of `key:` in a YAML text: inline, or a block scalar (`|`,
/// `>-`, ...) made of the more indented lines that follow.
pub fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let prefix = format!("{key}:");
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(rest) = trimmed.strip_prefix(&prefix) else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if rest.starts_with('|') || rest.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(rest.trim_matches('"').trim_matches('\'').to_string());
        }
    }
    out
}

/// Every PromQL query in deploy/: alert expressions, the dashboard's panel
/// queries and variable queries, and Prometheus queries of KEDA triggers
/// (none today: the ScaledObject's trigger is `kafka`, which reads the lag
/// from the brokers). Each as (where, query).
pub fn deploy_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts = read(ALERTS);
    let exprs = yaml_values(&alerts, "expr");
    let rules = alerts.matches("- alert:").count();
    assert_eq!(exprs.len(), rules, "one expr per alert in {ALERTS}");
    for e in exprs {
        out.push((ALERTS.to_string(), e));
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or("?");
                out.push((format!("{DASHBOARD}: {title}"), e.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            if v["type"] == "query" {
                // label_values(metric, label): the metric is the first argument.
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.rsplit_once(','))
                    .map(|(m, _)| m.to_string())
                    .unwrap_or_else(|| q.to_string());
                out.push((format!("{DASHBOARD}: variable {}", v["name"]), inner));
            }
        }
    }
    let keda = read(KEDA);
    if keda.contains("type: prometheus") {
        for q in yaml_values(&keda, "query") {
            out.push((KEDA.to_string(), q));
        }
    }
    out
}

/// The path the ServiceMonitor scrapes.
pub fn service_monitor_path() -> String {
    yaml_values(&read(SERVICE_MONITOR), "path")
        .into_iter()
        .next()
        .expect("servicemonitor.yaml has a path")
}

/// What is wrong with the metric names deploy/ uses, given a scrape:
/// one line per name that is neither exported nor external.
pub fn missing_metrics(scrape: &str) -> Vec<String> {
    let exported = families(scrape);
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (place, query) in deploy_queries() {
        for name in promql_metric_names(&query) {
            used.entry(name).or_default().insert(place.clone());
        }
    }
    let mut out = Vec::new();
    for (name, places) in &used {
        if EXTERNAL_METRICS.iter().any(|(n, _)| n == name) {
            continue;
        }
        let ok = match exported.get(name) {
            Some(f) => f.kind != "histogram" && f.samples > 0,
            None => ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .and_then(|base| exported.get(base))
                    .is_some_and(|f| f.kind == "histogram" && f.samples > 0)
            }),
        };
        if !ok {
            let why = match exported.get(name) {
                Some(f) if f.kind == "histogram" => "is a histogram: query _bucket, _sum or _count",
                Some(_) => "has no series",
                None => "is not exported",
            };
            out.push(format!("{name} {why} (used in {places:?})"));
        }
    }
    out
}
