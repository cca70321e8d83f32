//! The daemon binary as a separate process (`clevertap-deleter run --config
//! FILE`), the way it runs in production: configuration, start, scrape,
//! SIGTERM, SIGKILL, resident memory. And the fake CleverTap API it talks to,
//! served from a runtime of its own so the tests themselves can block.
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clevertap_deleter::domain::ids::IdKind;
use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap, Faults};

use super::broker::{free_port, signal};
pub use crate::common::metric_sum;
use crate::common::{self, account_id, merge_toml, passcode, REGIONS};

pub const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");

/// CleverTap's limit of concurrent requests per account; the fake enforces it.
pub const ACCOUNT_LIMIT: usize = 15;

/// The daemon's configuration for these tests: short timers, JSON logs,
/// `extra` (TOML tables) laid over it.
pub fn config_toml(
    bootstrap: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    port: u16,
    extra: &str,
) -> String {
    let base = common::config_toml(bootstrap, topic, group, endpoint, "");
    let e2e = format!(
        r#"
[api]
# The daemon's default: a client timeout abandons a request the API may
# still be working on (it would then count against the account's limit).
timeout_ms = 10000
max_concurrency = 10
retry_initial_ms = 20
retry_max_ms = 500
auth_retry_ms = 500
[pipeline]
commit_interval_ms = 100
rebalance_drain_timeout_ms = 4000
[server]
listen = "127.0.0.1:{port}"
[log]
format = "json"
level = "info"
"#
    );
    merge_toml(&merge_toml(&base, &e2e), extra)
}

/// A minimal HTTP/1.1 GET on loopback: (status, body), `None` if nobody answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Whether the family appears at all (a metric another version may lack).
pub fn has_metric(text: &str, family: &str) -> bool {
    text.lines().any(|l| l.starts_with(family))
}

/// One daemon process. Its stdout and stderr go to files (a chatty child can
/// never block on a pipe); it is killed if the test ends first.
pub struct Daemon {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Highest VmHWM seen by `memory()`, in KiB.
    pub peak_hwm_kib: u64,
}

impl Daemon {
    /// Starts `clevertap-deleter run --config FILE` with `config` (whose
    /// `server.listen` port must be `port`) and the extra environment.
    pub fn start(name: &str, config: &str, port: u16, envs: &[(&str, &str)]) -> Daemon {
        let dir = scratch_dir(&format!("e2e-daemon-{name}-"));
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", path.to_str().expect("utf-8 path")])
            // In its scratch directory, so a cleanup can find leftovers by cwd.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("stderr file"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CLEVERTAP_DELETER__") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn clevertap-deleter run");
        reap_on_exit(child.id(), dir.path());
        Daemon {
            name: name.to_string(),
            port,
            child: Some(child),
            dir,
            peak_hwm_kib: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Panics (with the logs) if the process exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("not stopped yet");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "daemon {} exited unexpectedly with {status}\n{}",
                self.name,
                self.log_tail(60)
            );
        }
    }

    /// Waits until /healthz answers (the process is up and serving).
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(self.port, "/healthz").map(|(s, _)| s) != Some(200) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "daemon {} does not serve /healthz after 30 s\n{}",
                self.name,
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics").map(|(_, body)| body)
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "KILL");
        let _ = child.wait();
    }

    /// kill -TERM; returns the exit status (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon {} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (VmRSS, VmHWM) in KiB from /proc/PID/status; records the peak.
    pub fn memory(&mut self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let (rss, hwm) = (field("VmRSS:")?, field("VmHWM:")?);
        self.peak_hwm_kib = self.peak_hwm_kib.max(hwm);
        Some((rss, hwm))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stderr_path()).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let tail: Vec<&str> = logs.lines().rev().take(lines).collect();
        let mut out = format!("--- last {lines} log lines of daemon {}\n", self.name);
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The last `lines` log lines, leaving out those containing any of `skip`.
    pub fn log_tail_except(&self, lines: usize, skip: &[&str]) -> String {
        let logs = self.logs();
        let tail: Vec<&str> = logs
            .lines()
            .filter(|l| !skip.iter().any(|s| l.contains(s)))
            .rev()
            .take(lines)
            .collect();
        let mut out = format!(
            "--- last {lines} log lines of daemon {} (filtered)\n",
            self.name
        );
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// JSON log lines whose message contains `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        keep_if_panicking(&mut self.dir, &format!("daemon {}", self.name));
    }
}

/// Makes sure daemon `pid` (working directory `dir`) dies when this test
/// process does, however it ends (a panic, SIGTERM, SIGKILL): a detached
/// shell collects "pid dir" lines on a pipe only this process holds, and at
/// end-of-file kills each pid that still runs in its directory.
fn reap_on_exit(pid: u32, dir: &std::path::Path) {
    use std::sync::{Mutex, OnceLock};
    static REAPER: OnceLock<Mutex<Option<std::process::ChildStdin>>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let script = "list=''; while read -r pid dir; do list=\"$list $pid:$dir\"; done; \
                      for e in $list; do pid=${e%%:*}; dir=${e#*:}; \
                      [ \"$(readlink /proc/$pid/cwd 2>/dev/null)\" = \"$dir\" ] && kill -9 \"$pid\"; \
                      done; exit 0";
        let child = Command::new("setsid")
            .args(["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Mutex::new(child.and_then(|mut c| c.stdin.take()))
    });
    if let Some(stdin) = reaper.lock().unwrap().as_mut() {
        let _ = writeln!(stdin, "{pid} {}", dir.display());
        let _ = stdin.flush();
    }
}

/// When a test fails, its scratch directories (configuration, logs, sqlite
/// file) are kept for inspection and their paths printed.
pub fn keep_if_panicking(dir: &mut tempfile::TempDir, what: &str) {
    if std::thread::panicking() {
        dir.disable_cleanup(true);
        eprintln!("e2e: kept the files of {what} in {}", dir.path().display());
    }
}

/// (account id, kind, id), as the fake records deletions.
pub type Key = (String, IdKind, String);

/// The fake CleverTap API on a runtime of its own. It can be taken down
/// (connections refused) and brought back on the same port; the figures of
/// every incarnation are merged.
pub struct Api {
    rt: tokio::runtime::Runtime,
    pub fake: FakeCleverTap,
    retired: Vec<FakeCleverTap>,
    /// Every incarnation, shared with observers (the commit sampler).
    incarnations: Fakes,
    config: FakeApiConfig,
    down: bool,
}

/// Every incarnation of the fake API so far.
pub type Fakes = std::sync::Arc<std::sync::Mutex<Vec<FakeCleverTap>>>;

impl Api {
    pub fn start(latency: Duration, faults: Faults) -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let config = FakeApiConfig {
            accounts: REGIONS
                .iter()
                .map(|r| FakeAccount::new(account_id(r), passcode(r)))
                .collect(),
            max_concurrency: ACCOUNT_LIMIT,
            latency,
            faults,
            ..FakeApiConfig::default()
        };
        let fake = rt
            .block_on(FakeCleverTap::start(config.clone()))
            .expect("fake CleverTap API");
        Api {
            rt,
            config: FakeApiConfig {
                listen: fake.addr(),
                ..config
            },
            incarnations: std::sync::Arc::new(std::sync::Mutex::new(vec![fake.clone()])),
            fake,
            retired: Vec::new(),
            down: false,
        }
    }

    /// Every incarnation of the fake, now and after `bring_back`.
    pub fn incarnations(&self) -> Fakes {
        self.incarnations.clone()
    }

    /// Whether the API refuses connections now.
    pub fn is_down(&self) -> bool {
        self.down
    }

    pub fn endpoint(&self) -> String {
        self.fake.endpoint()
    }

    /// Stops listening: new connections are refused, idle ones closed.
    pub fn take_down(&mut self) {
        assert!(!self.down);
        self.fake.shutdown();
        self.down = true;
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.config.listen, Duration::from_millis(200)).is_ok() {
            assert!(Instant::now() < deadline, "the fake API still listens");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listens again on the same port.
    pub fn bring_back(&mut self) {
        assert!(self.down);
        let deadline = Instant::now() + Duration::from_secs(10);
        let fake = loop {
            match self.rt.block_on(FakeCleverTap::start(self.config.clone())) {
                Ok(fake) => break fake,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebinding the fake API: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        self.incarnations.lock().unwrap().push(fake.clone());
        self.retired.push(std::mem::replace(&mut self.fake, fake));
        self.down = false;
    }

    fn all(&self) -> impl Iterator<Item = &FakeCleverTap> {
        self.retired.iter().chain(std::iter::once(&self.fake))
    }

    pub fn deletion_counts(&self) -> HashMap<Key, u32> {
        let mut merged: HashMap<Key, u32> = HashMap::new();
        for fake in self.all() {
            for (k, n) in fake.deletion_counts() {
                *merged.entry(k).or_default() += n;
            }
        }
        merged
    }

    pub fn deleted_total(&self) -> u64 {
        self.all().map(FakeCleverTap::deleted_total).sum()
    }

    pub fn request_count(&self) -> u64 {
        self.all().map(FakeCleverTap::request_count).sum()
    }

    pub fn status_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        let mut merged = std::collections::BTreeMap::new();
        for fake in self.all() {
            for (s, n) in fake.status_counts() {
                *merged.entry(s).or_default() += n;
            }
        }
        merged
    }

    pub fn violations(&self) -> Vec<String> {
        self.all().flat_map(FakeCleverTap::violations).collect()
    }

    /// Peak concurrent requests per account (over every incarnation).
    pub fn max_concurrent(&self) -> Vec<(String, usize)> {
        REGIONS
            .iter()
            .map(|r| {
                let acc = account_id(r);
                let peak = self
                    .all()
                    .map(|f| f.max_concurrent(&acc))
                    .max()
                    .unwrap_or(0);
                (acc, peak)
            })
            .collect()
    }

    /// Largest request seen (ids) and whether any request had no single kind.
    pub fn largest_request(&self) -> usize {
        self.all()
            .flat_map(|f| f.requests())
            .map(|r| r.ids)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        for fake in self.all() {
            fake.shutdown();
        }
    }
}

/// A scratch directory, removed at the end unless `E2E_KEEP_DIR` names a
/// directory to keep it in (configuration, logs, tansu's sqlite file).
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match std::env::var_os("E2E_KEEP_DIR") {
        Some(keep) if !keep.is_empty() => {
            std::fs::create_dir_all(&keep).expect("create E2E_KEEP_DIR");
            builder.disable_cleanup(true);
            builder.tempdir_in(keep).expect("temp dir")
        }
        _ => builder.tempdir().expect("temp dir"),
    }
}

/// A free port for a daemon's `server.listen`.
pub fn daemon_port() -> u16 {
    free_port()
}
