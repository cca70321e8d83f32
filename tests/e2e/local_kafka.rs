//! Apache Kafka clusters for the real-broker suites, started with
//! `deploy/local-kafka/local-kafka` (Kafka 4.4.0 in KRaft mode, 1 or 3
//! combined controller+broker nodes, jars from Maven Central): start, kill
//! -9 a node, restart it, stop the whole cluster and bring it back.
//!
//! Cleanup does not depend on the test ending well. Every cluster has a
//! reaper: a detached `sh` that waits for end-of-file on a pipe only this
//! process holds, then stops the cluster and removes its directory. The test
//! process ending in any way (a panic, an abort, SIGKILL) closes the pipe.
//! A cluster owned by one test is also stopped when it is dropped.
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The launcher script in this repository.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/local-kafka/local-kafka"
);

/// The user the launcher creates on a `--sasl-ssl` cluster.
#[derive(Debug, Clone)]
pub struct Sasl {
    /// SASL_SSL listeners (SCRAM-SHA-512), one per node.
    pub bootstrap: String,
    /// The CA that signed the brokers' certificates (PEM).
    pub ca: PathBuf,
    pub user: String,
    pub password_file: PathBuf,
}

impl Sasl {
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file).expect("read the SASL password file")
    }
}

/// Why local-kafka cannot run on this machine (a missing program), if so.
/// A start that fails for any other reason is a test failure, not a skip.
pub fn missing_prerequisite(sasl: bool) -> Option<String> {
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    let java_home = std::env::var_os("JAVA_HOME")
        .map(PathBuf::from)
        .filter(|home| home.join("bin/java").is_file());
    let mut missing = Vec::new();
    if java_home.is_none() && !on_path("java") {
        missing.push("java (Java 17 or newer)");
    }
    if java_home.is_none() && !on_path("javac") {
        missing.push("javac (a JDK, not only a JRE)");
    }
    // Maven is needed once per machine, to fetch the Kafka jars.
    if !on_path("mvn") && !jars_cached() {
        missing.push("mvn (Maven, once per machine to fetch the Kafka jars)");
    }
    for program in ["setsid", "flock"] {
        if !on_path(program) {
            missing.push(program);
        }
    }
    if sasl && !on_path("openssl") {
        missing.push("openssl");
    }
    (!missing.is_empty()).then(|| {
        format!(
            "local-kafka (deploy/local-kafka) needs {}; `.ci/run` installs them \
             (apt-get install default-jdk-headless maven)",
            missing.join(", ")
        )
    })
}

/// Whether the launcher's jar cache is filled (then Maven is not needed).
fn jars_cached() -> bool {
    let cache = std::env::var_os("LOCAL_KAFKA_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join("clevertap-deleter/local-kafka/4.4.0"))
        });
    cache.is_some_and(|c| c.join("libs/.stamp").is_file())
}

/// One local Kafka cluster in a scratch directory.
pub struct LocalKafka {
    pub dir: PathBuf,
    pub nodes: u32,
    /// PLAINTEXT listeners of every node.
    pub bootstrap: String,
    pub sasl: Option<Sasl>,
    /// Holds the write end of the reaper's pipe; dropping it stops the cluster.
    reaper: Mutex<Option<Child>>,
    /// Time the `start` took.
    pub started_in: Duration,
}

impl LocalKafka {
    /// Starts a cluster of `nodes` (1 or 3) nodes, with a SASL_SSL listener
    /// too when `sasl`. Panics with the launcher's output if it fails.
    pub fn start(nodes: u32, sasl: bool) -> LocalKafka {
        let dir = scratch(&format!("e2e-kafka{nodes}-"));
        let reaper = Self::reaper(&dir);
        let started = Instant::now();
        let mut cmd = Command::new(SCRIPT);
        cmd.args(["start", "--dir"])
            .arg(&dir)
            .args(["--nodes", &nodes.to_string()]);
        if sasl {
            cmd.arg("--sasl-ssl");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut cluster = LocalKafka {
            dir,
            nodes,
            bootstrap: String::new(),
            sasl: None,
            reaper: Mutex::new(Some(reaper)),
            started_in: started.elapsed(),
        };
        assert!(
            out.status.success(),
            "local-kafka start --nodes {nodes}{} failed ({}):\n{stderr}{stdout}",
            if sasl { " --sasl-ssl" } else { "" },
            out.status
        );
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("local-kafka start printed no {key}=:\n{stdout}"))
        };
        cluster.bootstrap = value("bootstrap");
        if sasl {
            cluster.sasl = Some(Sasl {
                bootstrap: value("sasl_bootstrap"),
                ca: PathBuf::from(value("ca")),
                user: value("sasl_user"),
                password_file: PathBuf::from(value("sasl_password_file")),
            });
        }
        println!(
            "e2e: Apache Kafka 4.4.0, {nodes} node(s){}, started in {:.1?} at {} (state in {})",
            if sasl { " with SASL_SSL" } else { "" },
            cluster.started_in,
            cluster.bootstrap,
            cluster.dir.display()
        );
        cluster
    }

    /// A detached shell that stops the cluster in `dir` and removes the
    /// directory once this process no longer holds its stdin (unless a
    /// failed test marked the directory to keep). Its working directory is
    /// `dir`, so `.ci/run`'s trap (processes whose cwd is under its scratch
    /// directory) finds it too.
    fn reaper(dir: &Path) -> Child {
        let keep = std::env::var_os("E2E_KEEP_DIR").is_some_and(|k| !k.is_empty());
        let script = format!(
            "cat >/dev/null; cd /; LOCAL_KAFKA_STOP_TIMEOUT=2 \"$0\" stop --dir \"$1\" >/dev/null 2>&1; \
             {}",
            if keep {
                ":"
            } else {
                "[ -e \"$1/.keep\" ] || rm -rf \"$1\""
            }
        );
        Command::new("setsid")
            .args(["sh", "-c", &script, SCRIPT])
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's reaper (setsid sh)")
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(SCRIPT)
            .arg(args[0])
            .arg("--dir")
            .arg(&self.dir)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &stderr)
        } else {
            Err(format!(
                "local-kafka {} failed ({}):\n{stderr}",
                args.join(" "),
                out.status
            ))
        }
    }

    /// kill -9 of node `node` (1..=nodes); returns once it is gone.
    pub fn kill(&self, node: u32) {
        self.run(&["kill", &node.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts node `node` again (same ports and data); returns once it is
    /// registered and unfenced.
    pub fn restart(&self, node: u32) {
        self.run(&["restart", &node.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops every node (SIGTERM, controlled shutdown; SIGKILL after 30 s).
    pub fn stop_all(&self) {
        self.run(&["stop"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts every stopped node at once (a lone node of three cannot form a
    /// quorum, so they must come back together); returns once all are
    /// registered and unfenced.
    pub fn restart_stopped(&self) {
        let stopped: Vec<u32> = (1..=self.nodes).filter(|n| !self.running(*n)).collect();
        let children: Vec<(u32, Child)> = stopped
            .iter()
            .map(|n| {
                let child = Command::new(SCRIPT)
                    .args(["restart", "--dir"])
                    .arg(&self.dir)
                    .arg(n.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run local-kafka restart");
                (*n, child)
            })
            .collect();
        for (n, child) in children {
            let out = child.wait_with_output().expect("local-kafka restart");
            assert!(
                out.status.success(),
                "local-kafka restart {n} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Whether node `node`'s JVM runs.
    pub fn running(&self, node: u32) -> bool {
        let status = self.run(&["status"]).unwrap_or_default();
        status
            .lines()
            .any(|l| l.starts_with(&format!("node {node} ")) && l.contains(" running, pid "))
    }

    /// Starts every node that is not running (a test that failed half-way
    /// may have left one down).
    pub fn heal(&self) {
        if (1..=self.nodes).any(|n| !self.running(n)) {
            println!(
                "e2e: restarting the stopped nodes of {}",
                self.dir.display()
            );
            self.restart_stopped();
        }
    }

    /// The last lines of every node's broker log.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in 1..=self.nodes {
            let path = self.dir.join(format!("node-{n}/server.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Marks the directory to be kept (the reaper then leaves it).
    pub fn keep(&self) {
        let _ = std::fs::File::create(self.dir.join(".keep"));
    }
}

impl Drop for LocalKafka {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.keep();
            eprintln!(
                "e2e: kept the Kafka cluster's files (server.log per node) in {}",
                self.dir.display()
            );
        }
        // Stop now rather than when the process ends: the next scenario
        // wants the CPU. SIGKILL after 2 s: nothing here needs a clean stop.
        let _ = Command::new(SCRIPT)
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .env("LOCAL_KAFKA_STOP_TIMEOUT", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Closing the pipe lets the reaper remove the directory.
        if let Some(mut reaper) = self.reaper.lock().ok().and_then(|mut r| r.take()) {
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
    }
}

/// A new empty directory for a cluster (under `E2E_KEEP_DIR` when set, else
/// under TMPDIR), removed by the cluster's reaper.
fn scratch(prefix: &str) -> PathBuf {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    let dir = match std::env::var_os("E2E_KEEP_DIR").filter(|k| !k.is_empty()) {
        Some(keep) => {
            std::fs::create_dir_all(&keep).expect("create E2E_KEEP_DIR");
            builder.tempdir_in(keep)
        }
        None => builder.tempdir(),
    };
    dir.expect("a scratch directory for the cluster").keep()
}

/// Writes to the terminal even while the test harness captures output.
pub fn tell(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}
