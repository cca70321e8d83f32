//! Running the compiled binary as a user does: a clean environment, output
//! captured to files, and a guard that kills the child if a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");

/// A command for the binary with a clean environment: no inherited
/// `CLEVERTAP_DELETER…` variables (overrides, Kafka secrets) and no
/// `RUST_LOG`.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CLEVERTAP_DELETER") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Stdout and stderr go to files, so a chatty child never blocks on a pipe.
pub struct Captured {
    _dir: tempfile::TempDir,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Default for Captured {
    fn default() -> Self {
        Self::new()
    }
}

impl Captured {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Captured {
            stdout: dir.path().join("stdout"),
            stderr: dir.path().join("stderr"),
            _dir: dir,
        }
    }

    pub fn attach(&self, cmd: &mut Command) {
        cmd.stdout(File::create(&self.stdout).expect("stdout file"))
            .stderr(File::create(&self.stderr).expect("stderr file"));
    }

    pub fn read(&self) -> (String, String) {
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into();
        (read(&self.stdout), read(&self.stderr))
    }

    /// Both streams (the end of stderr), for assertion messages.
    pub fn all(&self) -> String {
        let (out, err) = self.read();
        format!("--- stdout\n{out}\n--- stderr\n{}", tail(&err, 12_000))
    }
}

/// The end of a long log, for assertion messages.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Kills the child (SIGKILL, by its own handle) if a test fails before it exited.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls the child until it exits or `timeout` passes.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished run of the binary left behind.
pub struct Outcome {
    pub status: ExitStatus,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn new(status: ExitStatus, stdout: String, stderr: String) -> Outcome {
        Outcome {
            code: status.code(),
            status,
            stdout,
            stderr,
        }
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both streams, for error messages and leak checks.
    pub fn all(&self) -> String {
        format!(
            "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the binary to completion (at most 30 s).
pub fn run_bin(args: &[&str], envs: &[(&str, &str)]) -> Outcome {
    let captured = Captured::new();
    let mut cmd = command(args, envs);
    captured.attach(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("spawn clevertap-deleter"));
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    let (stdout, stderr) = captured.read();
    let status = status.unwrap_or_else(|| {
        panic!("`clevertap-deleter {args:?}` did not exit within 30 s\n{stdout}\n{stderr}")
    });
    Outcome::new(status, stdout, stderr)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Sends a signal to a process by id (`kill -SIG pid`).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// Runs the binary until it exits, however long that takes: (exit code,
/// stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let out = command(args, &[]).output().expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
