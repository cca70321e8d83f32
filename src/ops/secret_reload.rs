//! Secrets rotated without a restart. Kubernetes updates a mounted Secret in
//! place (an atomic swap of a symlink), so the daemon re-reads its secret
//! files every `secrets.reload_interval_ms` and on SIGHUP, and compares
//! their content (a hash: a swap may keep the modification time). A changed
//! region passcode or audit salt is used for new requests and records at
//! once; a changed Kafka secret needs a restart (librdkafka keeps the value
//! it was created with), which is logged and counted. A file that cannot be
//! read, or whose new value would be refused at start-up, keeps the old
//! value in use. Log lines name the setting and its file, never the value.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use crate::config::{SecretFile, SecretTarget};
use crate::domain::ids::RegionName;
use crate::domain::outcome::ReloadResult;
use crate::domain::secret::Secret;
use crate::ops::metrics::Metrics;

/// A new secret value for the pipeline to use from now on.
#[derive(Debug)]
pub enum SecretUpdate {
    RegionPasscode(RegionName, Secret),
    AuditSalt(Secret),
}

/// Asks the watcher to re-read every secret file now (SIGHUP). Cheap to
/// clone; a request made while one is being served is served once more.
#[derive(Clone, Default)]
pub struct ReloadTrigger(Arc<Notify>);

impl ReloadTrigger {
    pub fn reload_now(&self) {
        self.0.notify_one();
    }

    async fn requested(&self) {
        self.0.notified().await
    }
}

/// What a read of the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// SHA-256 of the trimmed content.
    Content([u8; 32]),
    Unreadable(String),
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.trim().as_bytes()).into()
}

struct Watched {
    file: SecretFile,
    /// What the last read found, so a state is reported once, not at every read.
    seen: Seen,
    /// The digest of the value in use.
    in_use: [u8; 32],
}

/// The secret files and what the daemon knows of them.
pub struct SecretWatcher {
    files: Vec<Watched>,
    metrics: Metrics,
}

impl SecretWatcher {
    /// `files` with the values the daemon started with (see
    /// [`crate::config::Config::secret_files`]).
    pub fn new(files: Vec<(SecretFile, Secret)>, metrics: Metrics) -> Self {
        let files = files
            .into_iter()
            .map(|(file, value)| {
                let in_use = digest(value.expose());
                Watched {
                    file,
                    seen: Seen::Content(in_use),
                    in_use,
                }
            })
            .collect();
        SecretWatcher { files, metrics }
    }

    /// Reads every file and returns the values to use from now on. A
    /// `forced` read (SIGHUP) reports a file that still cannot be used
    /// again; otherwise only changes are reported.
    pub fn check(&mut self, forced: bool) -> Vec<SecretUpdate> {
        let mut updates = Vec::new();
        for w in &mut self.files {
            let key = w.file.key.as_str();
            let path = w.file.path.display().to_string();
            let kind = w.file.target.kind();
            let count = |result: ReloadResult| {
                self.metrics
                    .secret_reloads
                    .with_label_values(&[kind.as_str(), result.as_str()])
                    .inc()
            };
            let read = w.file.read();
            let seen = match &read {
                Ok(value) => Seen::Content(digest(value.expose())),
                // The error names the key and the file, never the value.
                Err(e) => match std::fs::read_to_string(&w.file.path) {
                    Ok(text) => Seen::Content(digest(&text)),
                    Err(_) => Seen::Unreadable(e.message.clone()),
                },
            };
            if seen == w.seen && !forced {
                continue;
            }
            w.seen = seen.clone();
            if seen == Seen::Content(w.in_use) {
                continue;
            }
            match (read, &w.file.target) {
                (Err(e), _) => {
                    count(ReloadResult::Failure);
                    tracing::warn!(
                        secret = key,
                        %path,
                        error = %e.message,
                        "secret file changed but cannot be used; keeping the current value"
                    );
                }
                (Ok(_), SecretTarget::KafkaProperty(property)) => {
                    count(ReloadResult::RestartRequired);
                    // Reported once per new value.
                    if let Seen::Content(d) = seen {
                        w.in_use = d;
                    }
                    tracing::warn!(
                        secret = key,
                        %path,
                        property = %property,
                        "Kafka secret changed; librdkafka keeps the value it started with: restart to apply"
                    );
                }
                (Ok(value), target) => {
                    if let Seen::Content(d) = seen {
                        w.in_use = d;
                    }
                    count(ReloadResult::Success);
                    tracing::info!(
                        secret = key,
                        %path,
                        "secret reloaded; new requests use the new value"
                    );
                    updates.push(match target {
                        SecretTarget::RegionPasscode(region) => {
                            SecretUpdate::RegionPasscode(region.clone(), value)
                        }
                        SecretTarget::AuditSalt => SecretUpdate::AuditSalt(value),
                        SecretTarget::KafkaProperty(_) => unreachable!("matched above"),
                    });
                }
            }
        }
        // A new salt before a new passcode: deletions a new passcode releases
        // (a held region) are audited with the salt of the same Secret update.
        updates.sort_by_key(|u| matches!(u, SecretUpdate::RegionPasscode(..)));
        updates
    }
}

/// Re-reads the files every `interval` (`None`: only when triggered) and
/// on each `trigger`, and sends what changed to `updates`. Ends when the
/// receiver is gone.
pub async fn watch(
    mut watcher: SecretWatcher,
    interval: Option<Duration>,
    trigger: ReloadTrigger,
    updates: mpsc::UnboundedSender<SecretUpdate>,
) {
    let far = Duration::from_secs(86_400 * 365);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval.unwrap_or(far)) => false,
            _ = trigger.requested() => true,
            _ = updates.closed() => return,
        };
        let changed = watcher.check(forced);
        match (forced, watcher.files.len()) {
            (false, _) => {}
            (true, 0) => tracing::info!(
                "no secret file to re-read: only passcode_file, audit.salt_file and kafka.secret_properties_files are"
            ),
            (true, files) => {
                tracing::info!(files, reloaded = changed.len(), "secret files re-read")
            }
        }
        for update in changed {
            if updates.send(update).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn watcher(dir: &Path, metrics: &Metrics) -> SecretWatcher {
        let file = |name: &str, target| SecretFile {
            key: format!("key.{name}"),
            path: dir.join(name),
            target,
        };
        std::fs::write(dir.join("passcode"), "old-pass\n").unwrap();
        std::fs::write(dir.join("salt"), "a-salt-of-16-chars-or-more").unwrap();
        std::fs::write(dir.join("sasl"), "kafka-pw").unwrap();
        SecretWatcher::new(
            vec![
                (
                    file(
                        "passcode",
                        SecretTarget::RegionPasscode(RegionName::new("eu1")),
                    ),
                    Secret::new("old-pass"),
                ),
                (
                    file("salt", SecretTarget::AuditSalt),
                    Secret::new("a-salt-of-16-chars-or-more"),
                ),
                (
                    file("sasl", SecretTarget::KafkaProperty("sasl.password".into())),
                    Secret::new("kafka-pw"),
                ),
            ],
            metrics.clone(),
        )
    }

    fn count(metrics: &Metrics, kind: &str, result: &str) -> u64 {
        metrics
            .secret_reloads
            .with_label_values(&[kind, result])
            .get()
    }

    #[test]
    fn changes_are_applied_once_and_bad_values_are_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut w = watcher(dir.path(), &metrics);
        assert!(w.check(false).is_empty(), "nothing changed");
        assert!(w.check(true).is_empty(), "a forced read of unchanged files");

        std::fs::write(dir.path().join("passcode"), "new-pass").unwrap();
        std::fs::write(dir.path().join("sasl"), "kafka-pw-2").unwrap();
        let updates = w.check(false);
        assert!(
            matches!(&updates[..], [SecretUpdate::RegionPasscode(r, p)] if r.as_str() == "eu1" && p.expose() == "new-pass"),
            "{updates:?}"
        );
        assert_eq!(count(&metrics, "region_passcode", "success"), 1);
        assert_eq!(count(&metrics, "kafka_property", "restart_required"), 1);
        assert!(w.check(false).is_empty(), "reported once");
        assert_eq!(count(&metrics, "kafka_property", "restart_required"), 1);

        // A value start-up would refuse stays out, reported once (again on SIGHUP).
        std::fs::write(dir.path().join("passcode"), "two\nlines").unwrap();
        std::fs::write(dir.path().join("salt"), "short").unwrap();
        assert!(w.check(false).is_empty());
        assert!(w.check(false).is_empty());
        assert_eq!(count(&metrics, "region_passcode", "failure"), 1);
        assert_eq!(count(&metrics, "audit_salt", "failure"), 1);
        assert!(w.check(true).is_empty());
        assert_eq!(count(&metrics, "region_passcode", "failure"), 2);

        // A missing file keeps the value; the file coming back is used.
        std::fs::remove_file(dir.path().join("passcode")).unwrap();
        assert!(w.check(false).is_empty());
        assert_eq!(count(&metrics, "region_passcode", "failure"), 3);
        std::fs::write(dir.path().join("passcode"), "third-pass").unwrap();
        std::fs::write(dir.path().join("salt"), "another-salt-of-16-chars").unwrap();
        let updates = w.check(false);
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert!(
            matches!(updates[0], SecretUpdate::AuditSalt(_)),
            "the salt before the passcode it may release deletions for: {updates:?}"
        );
        assert_eq!(count(&metrics, "audit_salt", "success"), 1);
        // Back to the value in use: nothing to do.
        std::fs::write(dir.path().join("passcode"), "x\ny").unwrap();
        assert!(w.check(false).is_empty());
        std::fs::write(dir.path().join("passcode"), "third-pass\n").unwrap();
        assert!(w.check(false).is_empty());
        assert_eq!(count(&metrics, "region_passcode", "success"), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_kubernetes_style_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/passcode"), "old-pass").unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/passcode", d.join("passcode")).unwrap();
        let metrics = Metrics::new();
        let mut w = SecretWatcher::new(
            vec![(
                SecretFile {
                    key: "regions.eu1.passcode_file".into(),
                    path: d.join("passcode"),
                    target: SecretTarget::RegionPasscode(RegionName::new("eu1")),
                },
                Secret::new("old-pass"),
            )],
            metrics,
        );
        assert!(w.check(false).is_empty());
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/passcode"), "new-pass").unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let updates = w.check(false);
        assert!(
            matches!(&updates[..], [SecretUpdate::RegionPasscode(_, p)] if p.expose() == "new-pass"),
            "{updates:?}"
        );
    }
}
