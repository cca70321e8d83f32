//! Security properties, tested from the outside:
//!
//! - HTTPS to CleverTap: a TLS fake of the API with a generated CA; trusted
//!   only through `api.ca_file`, refused (retryable, no passcode in any error)
//!   without it or for the wrong host name; plain http to a non-loopback host
//!   refused at start-up.
//! - Kafka SASL against librdkafka's mock cluster, which offers none: a clear
//!   error and not-ready. SASL/SCRAM over TLS against Apache Kafka itself
//!   (wrong password, untrusted CA) is in tests/e2e_security.rs.
//! - No secret (passcodes, Kafka passwords, the audit salt) in logs at the
//!   most verbose level, in `/metrics`, `/readyz` or `check-config`, through a
//!   run with 401, 400, 429 and 5xx answers; no person id in logs unless
//!   `log.log_ids = true`.
//! - The metrics/health endpoints: GET only, no reflection, bounded
//!   connections, closes idle and slow connections, survives a flood.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clevertap_deleter::clevertap::api::{classify, RetryReason, TransportError, Verdict};
use clevertap_deleter::config;
use clevertap_deleter::domain::batch::DeleteBatch;
use clevertap_deleter::domain::ids::{IdKind, RegionName};
use clevertap_deleter::ops::health::Health;
use clevertap_deleter::ops::metrics::Metrics;
use clevertap_deleter::ops::server::{self, ServerLimits};
use clevertap_deleter::testkit::fake_api::{FakeAccount, FakeApiConfig, FakeCleverTap, Faults};
use clevertap_deleter::testkit::synth::{generate, SynthEvent, SynthSpec};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

// ---------------------------------------------------------------- helpers

/// A daemon process (`run --config FILE`) with its output captured.
struct Daemon {
    child: std::cell::RefCell<ChildGuard>,
    captured: Captured,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(config_text: &str, envs: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_text).expect("write config");
        let captured = Captured::new();
        let mut cmd = command(&["run", "--config", path.to_str().unwrap()], envs);
        captured.attach(&mut cmd);
        let child = ChildGuard(cmd.spawn().expect("spawn clevertap-deleter run"));
        Daemon {
            child: std::cell::RefCell::new(child),
            captured,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        self.captured.read().1
    }

    /// Panics if the daemon exited.
    fn assert_running(&self) {
        let status = self.child.borrow_mut().0.try_wait().expect("try_wait");
        if let Some(status) = status {
            panic!(
                "the daemon exited early with {status}\n{}",
                self.captured.all()
            );
        }
    }

    /// SIGTERM, then the exit status (within 45 s) and both streams.
    fn stop(self) -> Outcome {
        let mut child = self.child.borrow_mut();
        let pid = child.0.id();
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {pid}");
        let status = wait_exit(&mut child.0, Duration::from_secs(45));
        let (stdout, stderr) = self.captured.read();
        let status = status.unwrap_or_else(|| {
            panic!(
                "no exit within 45 s of SIGTERM\n{stdout}\n{}",
                tail(&stderr, 12_000)
            )
        });
        Outcome::new(status, stdout, stderr)
    }
}

/// A file only its owner can read, as secrets should be.
fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write secret file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// A blocking GET with a raw socket: (status, whole response text); status 0
/// when nothing listens yet.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return (0, format!("connect {addr}: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    (status_of(&text), text)
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `check` (blocking) until true, or panics with `what` and `context()`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- TLS

/// A generated CA and a server certificate it signed.
struct Pki {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new(ca_name: &str, server_names: &[&str]) -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, server_names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

/// A TLS-terminating proxy: accepts TLS on `addr()` and forwards the
/// decrypted bytes to `upstream` (the plain fake API, or a Kafka broker).
struct TlsProxy {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(pki: &Pki, listen: SocketAddr, upstream: SocketAddr) -> TlsProxy {
        let listener = TcpListener::bind(listen).await.expect("bind TLS proxy");
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (ok, failed) = (handshakes.clone(), failed_handshakes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            tls
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    if let Ok(mut plain) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsProxy {
            addr,
            handshakes,
            failed_handshakes,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collects what `tracing` writes while a guard is held (current thread only).
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

const TLS_PASSCODE: &str = "tls-pass-Vb73-Qz19";

async fn tls_fake_api() -> FakeCleverTap {
    FakeCleverTap::start(FakeApiConfig {
        accounts: vec![FakeAccount::new("ACC-TLS", TLS_PASSCODE)],
        ..FakeApiConfig::default()
    })
    .await
    .expect("fake api")
}

fn tls_config(endpoint: &str, ca_file: Option<&Path>) -> config::Config {
    let mut text = format!(
        "[regions.eu1]\naccount_id = \"ACC-TLS\"\npasscode = \"{TLS_PASSCODE}\"\nendpoint = \"{endpoint}\"\n\
         [api]\ntimeout_ms = 3000\n"
    );
    if let Some(ca) = ca_file {
        text.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    config::from_toml(&text).expect("valid TLS test config")
}

fn one_id_batch(id: &str) -> DeleteBatch {
    DeleteBatch::new(
        RegionName::new("eu1"),
        IdKind::Identity,
        vec![Arc::from(id)],
    )
    .expect("a batch")
}

#[tokio::test]
async fn https_with_ca_file_deletes_and_without_it_is_a_retryable_transport_error() {
    let fake = tls_fake_api().await;
    let pki = Pki::new("clevertap-deleter test CA", &["localhost", "127.0.0.1"]);
    let proxy = TlsProxy::start(&pki, "127.0.0.1:0".parse().unwrap(), fake.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let logs = LogBuffer::default();
    let _guard = logs.capture();

    // Trusted through api.ca_file: the daemon's own client deletes over TLS,
    // by IP address and by host name.
    for endpoint in [
        format!("https://127.0.0.1:{}", proxy.addr.port()),
        format!("https://localhost:{}", proxy.addr.port()),
    ] {
        let cfg = tls_config(&endpoint, Some(&ca_file));
        assert_eq!(cfg.extra_roots.len(), 1);
        let api = clevertap_deleter::clevertap::api::client_for(&cfg).expect("HTTPS client");
        let batch = one_id_batch("tls-user-1");
        let result = api.delete(&cfg.regions[0], &batch).await;
        let reply = result.as_ref().unwrap_or_else(|e| {
            panic!("{endpoint}: {e:?}\n{}", logs.text());
        });
        assert_eq!(reply.status, 200, "{endpoint}");
        assert_eq!(classify(&result), Verdict::Deleted, "{endpoint}");
    }
    assert!(proxy.handshakes.load(Ordering::SeqCst) >= 2);
    let deleted = fake.deletion_counts();
    assert_eq!(
        deleted.get(&(
            "ACC-TLS".to_string(),
            IdKind::Identity,
            "tls-user-1".to_string()
        )),
        Some(&2),
        "{deleted:?}"
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // Without the CA the certificate is unknown: a transport error, retried
    // as a connection problem, never a success.
    let failed_before = proxy.failed_handshakes.load(Ordering::SeqCst);
    let cfg = tls_config(&format!("https://127.0.0.1:{}", proxy.addr.port()), None);
    assert!(cfg.extra_roots.is_empty());
    let api = clevertap_deleter::clevertap::api::client_for(&cfg).expect("HTTPS client");
    let result = api
        .delete(&cfg.regions[0], &one_id_batch("tls-user-2"))
        .await;
    assert!(
        matches!(result, Err(TransportError::Connect | TransportError::Other)),
        "{result:?}"
    );
    assert_eq!(
        classify(&result),
        Verdict::Retry {
            reason: RetryReason::Connection,
            after: None
        }
    );
    // The proxy sees the client abort the handshake (its task may lag a little).
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.failed_handshakes.load(Ordering::SeqCst) == failed_before {
        assert!(Instant::now() < deadline, "the TLS handshake did not fail");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A certificate for another name, from a trusted CA: refused too.
    let other = Pki::new("other test CA", &["api.example.com"]);
    let other_proxy = TlsProxy::start(&other, "127.0.0.1:0".parse().unwrap(), fake.addr()).await;
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let cfg = tls_config(
        &format!("https://127.0.0.1:{}", other_proxy.addr.port()),
        Some(&other_ca),
    );
    let api = clevertap_deleter::clevertap::api::client_for(&cfg).expect("HTTPS client");
    let result = api
        .delete(&cfg.regions[0], &one_id_batch("tls-user-3"))
        .await;
    assert!(
        matches!(
            classify(&result),
            Verdict::Retry {
                reason: RetryReason::Connection,
                ..
            }
        ),
        "{result:?}"
    );

    // Only the trusted, matching requests reached the API.
    assert_eq!(fake.request_count(), 2);
    let text = logs.text();
    for line in text
        .lines()
        .filter(|l| l.contains("no answer from CleverTap"))
    {
        eprintln!("{line}");
    }
    assert!(
        text.contains("no answer from CleverTap"),
        "the cause is logged:\n{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("certificate"),
        "the log says the certificate was refused:\n{text}"
    );
    assert!(
        !text.contains(TLS_PASSCODE),
        "passcode in the logs:\n{text}"
    );
    assert!(
        !format!("{result:?}").contains(TLS_PASSCODE),
        "passcode in the error"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_so_the_passcode_stays_with_the_endpoint() {
    // Elsewhere: a server that must never see a request.
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let contacted = Arc::new(AtomicUsize::new(0));
    let seen = contacted.clone();
    let elsewhere_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = elsewhere.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"status\":\"success\"}")
                .await;
        }
    });
    // The endpoint answers every request with a redirect there (307 keeps
    // method, body and, in reqwest, custom headers such as the passcode).
    let endpoint = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint_addr = endpoint.local_addr().unwrap();
    let endpoint_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = endpoint.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere_addr}/1/delete/profiles.json\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    let cfg = tls_config(&format!("http://{endpoint_addr}"), None);
    let api = clevertap_deleter::clevertap::api::client_for(&cfg).expect("client");
    let result = api
        .delete(&cfg.regions[0], &one_id_batch("redirected-user"))
        .await;
    assert_eq!(result.as_ref().map(|r| r.status), Ok(307), "{result:?}");
    assert!(matches!(
        classify(&result),
        Verdict::Retry {
            reason: RetryReason::Unexpected,
            ..
        }
    ));
    assert_eq!(
        contacted.load(Ordering::SeqCst),
        0,
        "the redirect target was contacted"
    );
    endpoint_task.abort();
    elsewhere_task.abort();
}

#[test]
fn plain_http_to_a_remote_host_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "insecure-pass-Ff83-1177";
    let text = format!(
        "[regions.eu1]\naccount_id = \"ACC-EU1\"\npasscode = \"{secret}\"\nendpoint = \"http://api.example.com\"\n"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();
    for command in ["check-config", "run"] {
        let out = run_bin(&[command, "--config", path], &[]);
        assert_eq!(out.code, Some(2), "{command}:\n{}", out.all());
        assert!(
            out.stderr.contains("regions.eu1.endpoint")
                && out.stderr.contains("allow_insecure_endpoint"),
            "{command} names the key and the way out:\n{}",
            out.all()
        );
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "{}",
            out.all()
        );
    }
    // Explicitly allowed: accepted (and the passcode still redacted).
    let allowed = dir.path().join("allowed.toml");
    std::fs::write(&allowed, format!("{text}allow_insecure_endpoint = true\n")).unwrap();
    let out = run_bin(
        &["check-config", "--config", allowed.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.stdout.contains(secret), "{}", out.all());
    // Credentials in the endpoint URL are refused without being echoed.
    let creds = dir.path().join("creds.toml");
    std::fs::write(
        &creds,
        "[regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\nendpoint = \"https://u:url-pw-5521@api.example.com\"\n",
    )
    .unwrap();
    let out = run_bin(&["check-config", "--config", creds.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("regions.eu1.endpoint"), "{}", out.all());
    assert!(!out.stderr.contains("url-pw-5521"), "{}", out.all());
}

#[test]
fn secret_files_readable_by_others_are_reported_and_kafka_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let passcode = "file-pass-Jq27-4410";
    let kafka_pw = "kafka-file-pw-Lm62";
    let env_pw = "kafka-env-pw-Tt91";
    let pass_file = dir.path().join("passcode");
    std::fs::write(&pass_file, format!("{passcode}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let kafka_file = secret_file(dir.path(), "kafka-password", kafka_pw);
    let text = format!(
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
         [kafka.secret_properties_files]\n\"ssl.key.password\" = \"{}\"\n\
         [regions.eu1]\naccount_id = \"ACC-EU1\"\npasscode_file = \"{}\"\n",
        kafka_file.display(),
        pass_file.display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        &[
            ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", env_pw),
            ("CLEVERTAP_DELETER_KAFKA_SASL_USERNAME", "svc-deleter"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    for secret in [passcode, kafka_pw, env_pw] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "`{secret}` shown:\n{}",
            out.all()
        );
    }
    let shown: toml::Table = out.stdout.parse().expect("TOML on stdout");
    let props = shown["kafka"]["properties"].as_table().unwrap();
    assert_eq!(props["sasl.password"].as_str(), Some("<redacted>"));
    assert_eq!(props["ssl.key.password"].as_str(), Some("<redacted>"));
    assert_eq!(props["security.protocol"].as_str(), Some("SASL_SSL"));
    // The 0644 passcode file is reported, the 0600 Kafka file is not.
    #[cfg(unix)]
    {
        let warnings: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("warning"))
            .collect();
        assert_eq!(warnings.len(), 1, "{}", out.all());
        assert!(
            warnings[0].contains("regions.eu1.passcode_file") && warnings[0].contains("0644"),
            "{}",
            out.all()
        );
    }
}

#[test]
fn gssapi_is_not_built_and_fails_at_start_up() {
    // Kerberos needs Cyrus SASL (rdkafka's `sasl` feature), which is not built:
    // a clear configuration error at start-up, not a stall.
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanisms\" = \"GSSAPI\"\n[server]\nlisten = \"127.0.0.1:{}\"\n\
         [regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\nendpoint = \"http://127.0.0.1:9\"\n",
        free_port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("GSSAPI"), "{}", out.all());
}

// ---------------------------------------------------------------- endpoints

async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 10 s")
        .ok();
    String::from_utf8_lossy(&response).to_string()
}

async fn test_server(limits: ServerLimits) -> SocketAddr {
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let (addr, _task) =
        server::serve_with_limits("127.0.0.1:0".parse().unwrap(), metrics, health, limits)
            .await
            .expect("serve");
    addr
}

#[tokio::test]
async fn endpoints_serve_only_get_and_reflect_nothing() {
    let addr = test_server(ServerLimits::default()).await;
    assert!(addr.ip().is_loopback(), "bound where configured: {addr}");
    let marker = "zq81reflect";
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {marker}.example\r\nX-Probe: <script>{marker}</script>\r\n\
             User-Agent: {marker}\r\nConnection: close\r\n\r\n"
        )
    };
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 503),
        ("/metrics", 200),
        (&format!("/metrics?{marker}=%3Cb%3E{marker}") as &str, 200),
        (&format!("/{marker}") as &str, 404),
        (&format!("/healthz/{marker}") as &str, 404),
        ("/../../etc/passwd", 404),
        ("/", 404),
    ] {
        let response = raw_request(addr, &get(path)).await;
        assert_eq!(status_of(&response), status, "GET {path}:\n{response}");
        assert!(
            !response.contains(marker),
            "GET {path} reflects input:\n{response}"
        );
    }
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let response = raw_request(
                addr,
                &format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nX-Probe: {marker}\r\nContent-Length: 12\r\n\
                     Connection: close\r\n\r\n{marker}!"
                ),
            )
            .await;
            assert_eq!(status_of(&response), 405, "{method} {path}:\n{response}");
            assert!(
                !response.contains(marker),
                "{method} {path} reflects input:\n{response}"
            );
        }
    }
    // HEAD is GET without a body.
    let response = raw_request(
        addr,
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    // Garbage is refused without echo.
    let response = raw_request(addr, &format!("{marker} {marker}\r\n\r\n")).await;
    assert!(!response.contains(marker), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_close_idle_and_slow_connections_and_recover() {
    let limits = ServerLimits {
        max_connections: 8,
        idle_timeout: Duration::from_millis(500),
        max_connection_age: Duration::from_secs(2),
    };
    let addr = test_server(limits).await;

    // Fill every slot with connections that send half a request.
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    // A real client still gets its answer, once the stalled ones time out.
    let started = Instant::now();
    let response = raw_request(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    // The stalled connections were closed by the server.
    for mut s in idle {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed within 3 s");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }

    // A client trickling a byte every 200 ms (never idle) is cut at the age limit.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let cut = loop {
        if slow.write_all(b"X").await.is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            // An error status for the garbage request line also ends it.
            Ok(Ok(_)) => break started.elapsed(),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a trickling client was never cut"
        );
    };
    assert!(cut < Duration::from_secs(6), "cut after {cut:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_survive_a_flood_of_connections() {
    // Default limits, as the daemon runs.
    let addr = test_server(ServerLimits::default()).await;
    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // 250 connections that stall (half a request), held for 3 s...
    for _ in 0..250 {
        tasks.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }));
    }
    // ...and 250 clients doing real requests meanwhile, 4 each.
    for _ in 0..250 {
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            for path in ["/metrics", "/healthz", "/readyz", "/nope"] {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                if s.write_all(request.as_bytes()).await.is_err() {
                    continue;
                }
                let mut response = Vec::new();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut response))
                        .await
                {
                    if status_of(&String::from_utf8_lossy(&response)) != 0 {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let flood = started.elapsed();
    let answered = answered.load(Ordering::Relaxed);
    eprintln!("flood: 500 connections, {answered} of 1000 requests answered in {flood:?}");
    assert_eq!(answered, 1000, "every real request was answered");
    // Afterwards the endpoints answer at once.
    let started = Instant::now();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------- no secret leaks

/// Secrets of the leak test, each distinctive enough to grep for.
const SASL_PASSWORD: &str = "sasl-pw-Hc55-unused-9q";
const SSL_KEY_PASSWORD: &str = "ssl-key-pw-Rw18-unused";
const AUDIT_SALT: &str = "audit-salt-Nn41-0123456789";

fn region_passcode(region: &str) -> String {
    passcode(region)
}

/// Config for the leak tests: eu1's passcode inline, in1's from a file, us1's
/// from the environment; Kafka passwords from the file, a secret file and the
/// environment (unused with PLAINTEXT, but handed to librdkafka); hashed audit.
fn leak_config(
    dir: &Path,
    bootstrap: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    port: u16,
    log: &str,
) -> String {
    let in1_file = secret_file(dir, "in1-passcode", &region_passcode("in1"));
    let ssl_file = secret_file(dir, "ssl-key-password", SSL_KEY_PASSWORD);
    let salt_file = secret_file(dir, "audit-salt", AUDIT_SALT);
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
topics = ["{topic}"]
group_id = "{group}"
dlq_topic = "{topic}.dlq"
audit_topic = "{topic}.audit"
[kafka.properties]
"security.protocol" = "PLAINTEXT"
"sasl.username" = "leak-test-user"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[kafka.secret_properties_files]
"ssl.key.password" = "{ssl}"
[batch]
linger_ms = 30
[api]
timeout_ms = 2000
max_concurrency = 4
retry_initial_ms = 10
retry_max_ms = 300
auth_retry_ms = 300
[pipeline]
commit_interval_ms = 100
shutdown_timeout_ms = 10000
[server]
listen = "127.0.0.1:{port}"
[audit]
hash_ids = true
salt_file = "{salt}"
[log]
{log}
[regions.eu1]
account_id = "{eu1}"
passcode = "{eu1_pass}"
endpoint = "{endpoint}"
[regions.in1]
account_id = "{in1}"
passcode_file = "{in1_file}"
endpoint = "{endpoint}"
[regions.us1]
account_id = "{us1}"
endpoint = "{endpoint}"
"#,
        ssl = ssl_file.display(),
        salt = salt_file.display(),
        eu1 = account_id("eu1"),
        eu1_pass = region_passcode("eu1"),
        in1 = account_id("in1"),
        in1_file = in1_file.display(),
        us1 = account_id("us1"),
    )
}

fn leak_env() -> Vec<(String, String)> {
    vec![
        (
            "CLEVERTAP_DELETER__REGIONS__US1__PASSCODE".to_string(),
            region_passcode("us1"),
        ),
        (
            "CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD".to_string(),
            SASL_PASSWORD.to_string(),
        ),
    ]
}

fn secrets() -> Vec<String> {
    let mut s: Vec<String> = REGIONS.iter().map(|r| region_passcode(r)).collect();
    s.extend([SASL_PASSWORD, SSL_KEY_PASSWORD, AUDIT_SALT].map(String::from));
    s
}

/// Every distinct id the events ask to delete.
fn expected_ids(events: &[SynthEvent]) -> Vec<(String, IdKind, String)> {
    let set: HashSet<(String, IdKind, String)> = events
        .iter()
        .flat_map(|e| e.deletions.iter())
        .map(|d| (d.region.clone(), d.kind, d.id.clone()))
        .collect();
    let mut v: Vec<_> = set.into_iter().collect();
    v.sort();
    v
}

fn end_offsets(events: usize, partitions: i32) -> Vec<i64> {
    (0..partitions as usize)
        .map(|p| (0..events).filter(|i| i % partitions as usize == p).count() as i64)
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "secret `{secret}` found in {what}:\n{}",
            tail(text, 4_000)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_and_no_id_leaks_at_trace_level_through_failures() {
    let kafka = Kafka::new();
    let topic = unique("leak");
    let partitions = 3;
    kafka.topic(&topic, partitions);
    kafka.topic(&format!("{topic}.dlq"), 1);
    kafka.topic(&format!("{topic}.audit"), 1);
    let events = generate(&SynthSpec {
        count: 600,
        seed: 7,
        ..SynthSpec::default()
    });
    let ids = expected_ids(&events);
    // Three ids CleverTap refuses (400): their events are dead-lettered.
    let rejected: Vec<String> = ids
        .iter()
        .filter(|(region, _, _)| region != "eu1")
        .step_by(37)
        .take(3)
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(rejected.len(), 3);
    kafka
        .produce(&topic, &events, |i| (i % partitions as usize) as i32)
        .await;

    let api = fake_api(15).await;
    api.reject_ids(rejected.clone());
    // eu1's passcode is wrong at first (401: held). One us1 id makes its
    // batch fail with 503, one in1 id with 429 (Retry-After: 1), until fixed;
    // more 429 and 5xx come at random.
    api.set_passcode(&account_id("eu1"), "rotated-elsewhere");
    let pick = |region: &str| {
        ids.iter()
            .find(|(r, _, id)| r == region && !rejected.contains(id))
            .map(|(_, _, id)| id.clone())
            .unwrap()
    };
    api.fail_ids([pick("us1")], 503);
    api.fail_ids([pick("in1")], 429);
    api.set_faults(Faults {
        server_error: 0.1,
        too_many: 0.1,
        retry_after_secs: Some(1),
        ..Faults::default()
    });

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let group = unique("leak-group");
    let text = leak_config(
        dir.path(),
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        port,
        "level = \"trace\"\nlog_ids = false",
    );
    let env = leak_env();
    let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    envs.push(("RUST_LOG", "trace"));
    let daemon = Daemon::start(&text, &envs);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Held: /readyz names eu1; 401, 429 and 5xx answers all happened.
    let readyz = tokio::task::block_in_place(|| {
        let mut last = String::new();
        wait_until(
            "eu1 held, 401/429/5xx/400 answered",
            Duration::from_secs(60),
            || {
                daemon.assert_running();
                let counts = api.status_counts();
                let has = |lo: u16, hi: u16| counts.range(lo..=hi).any(|(_, n)| *n > 0);
                let (_, body) = http_get(addr, "/readyz");
                let held = body.contains("region eu1: held");
                if held {
                    last = body;
                }
                held && has(401, 401) && has(429, 429) && has(500, 599) && has(400, 400)
            },
            || format!("{:?}\n{}", api.status_counts(), daemon.captured.all()),
        );
        last
    });
    assert!(readyz.contains("region eu1: held"), "{readyz}");

    // Fixed: the passcode is accepted again and the faults stop.
    api.set_passcode(&account_id("eu1"), &region_passcode("eu1"));
    api.set_faults(Faults::default());
    api.clear_failing_ids();
    let end = end_offsets(events.len(), partitions);
    tokio::task::block_in_place(|| {
        wait_until(
            "every event finished and committed",
            Duration::from_secs(90),
            || {
                daemon.assert_running();
                kafka.committed(&group, &topic, partitions) == end
            },
            || format!("{:?}\n{}", api.status_counts(), daemon.captured.all()),
        )
    });
    let (metrics_status, metrics) = tokio::task::block_in_place(|| http_get(addr, "/metrics"));
    assert_eq!(metrics_status, 200);
    let (_, readyz) = tokio::task::block_in_place(|| http_get(addr, "/readyz"));
    let (_, healthz) = tokio::task::block_in_place(|| http_get(addr, "/healthz"));
    let out = tokio::task::block_in_place(|| daemon.stop());
    assert_eq!(out.code, Some(0), "{}", tail(&out.all(), 12_000));

    // The run really went through every failure, at the most verbose level.
    let deleted: HashSet<String> = api
        .deletion_counts()
        .into_keys()
        .map(|(_, _, id)| id)
        .collect();
    for (_, _, id) in &ids {
        assert_eq!(
            deleted.contains(id),
            !rejected.contains(id),
            "{id}: deleted unless rejected"
        );
    }
    assert!(
        metric(
            &metrics,
            "clevertap_deleter_dead_letters_total{reason=\"api_rejected\"}"
        ) >= 3.0,
        "{metrics}"
    );
    let counts = api.status_counts();
    let trace_lines = out.stderr.lines().filter(|l| l.contains("TRACE")).count();
    eprintln!(
        "answers: {counts:?}; {} log lines, {trace_lines} at trace",
        out.stderr.lines().count()
    );
    assert!(out.stderr.contains("TRACE"), "trace level took effect");
    assert!(out.stderr.contains("DEBUG"), "debug lines too");
    assert!(out.stderr.contains("holding its deletions"), "401 logged");
    assert!(out.stderr.contains("region released"), "release logged");
    assert!(
        out.stderr.contains("id rejected by CleverTap"),
        "400 logged"
    );
    assert!(out.stderr.contains("will retry"), "429/5xx logged");

    // No secret anywhere: logs, metrics, readiness, health, check-config.
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("stdout", &out.stdout);
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("/readyz", &readyz);
    assert_no_secret("/healthz", &healthz);
    let config_path = dir.path().join("check.toml");
    std::fs::write(&config_path, &text).unwrap();
    let check = run_bin(
        &["check-config", "--config", config_path.to_str().unwrap()],
        &envs,
    );
    assert_eq!(check.code, Some(0), "{}", check.all());
    assert_no_secret("check-config", &format!("{}{}", check.stdout, check.stderr));
    assert!(check.stdout.contains("<redacted>"), "{}", check.all());

    // No person id in the logs or metrics (log.log_ids is off), not even at trace.
    let logged: Vec<&String> = ids
        .iter()
        .map(|(_, _, id)| id)
        .filter(|id| out.stderr.contains(id.as_str()) || out.stdout.contains(id.as_str()))
        .take(5)
        .collect();
    assert!(logged.is_empty(), "ids in the logs: {logged:?}");
    let in_metrics: Vec<&String> = ids
        .iter()
        .map(|(_, _, id)| id)
        .filter(|id| metrics.contains(id.as_str()))
        .take(5)
        .collect();
    assert!(in_metrics.is_empty(), "ids in /metrics: {in_metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_logged_only_when_log_ids_asks_for_it() {
    let kafka = Kafka::new();
    let topic = unique("log-ids");
    kafka.topic(&topic, 1);
    kafka.topic(&format!("{topic}.dlq"), 1);
    kafka.topic(&format!("{topic}.audit"), 1);
    let events = generate(&SynthSpec {
        count: 60,
        poison_ratio: 0.0,
        seed: 11,
        ..SynthSpec::default()
    });
    let ids = expected_ids(&events);
    let rejected = ids[ids.len() / 2].2.clone();
    kafka.produce(&topic, &events, |_| 0).await;
    let api = fake_api(15).await;
    api.reject_ids([rejected.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let group = unique("log-ids-group");
    let text = leak_config(
        dir.path(),
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        port,
        "level = \"debug\"\nlog_ids = true",
    );
    let env = leak_env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::start(&text, &envs);
    let end = end_offsets(events.len(), 1);
    tokio::task::block_in_place(|| {
        wait_until(
            "every event committed",
            Duration::from_secs(60),
            || {
                daemon.assert_running();
                kafka.committed(&group, &topic, 1) == end
            },
            || daemon.captured.all(),
        )
    });
    let out = tokio::task::block_in_place(|| daemon.stop());
    assert_eq!(out.code, Some(0), "{}", tail(&out.all(), 12_000));
    // Every id shows up, on debug lines only, and the rejected one is named.
    for (_, _, id) in &ids {
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains(id.as_str()))
            .collect();
        assert!(!lines.is_empty(), "{id} is not in the debug log");
        assert!(
            lines.iter().all(|l| l.contains("DEBUG")),
            "{id} logged above debug: {lines:?}"
        );
    }
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("rejected id") && l.contains(&rejected)),
        "the rejected id is logged"
    );
    // Secrets still never.
    assert_no_secret("stderr", &out.stderr);
}

// ---------------------------------------------------------------- Kafka SASL/TLS

fn sasl_daemon_config(
    bootstrap: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    port: u16,
    properties: &str,
) -> String {
    let base = config_toml(bootstrap, topic, group, endpoint, "");
    merge_toml(
        &base,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[kafka.properties]\n{properties}"),
    )
}

/// Runs the daemon with credentials the broker refuses: a clear error in the
/// log, `/readyz` 503 with the Kafka reason, `kafka_connected` 0, nothing
/// consumed; stops cleanly.
fn run_refused(text: &str, envs: &[(&str, &str)], port: u16, expect_in_log: &[&str], secret: &str) {
    let daemon = Daemon::start(text, envs);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(
        "an authentication error in the log",
        Duration::from_secs(30),
        || {
            daemon.assert_running();
            let err = daemon.stderr();
            expect_in_log.iter().all(|e| err.contains(e))
        },
        || daemon.captured.all(),
    );
    // Readiness comes from statistics every 5 s: give it one round.
    std::thread::sleep(Duration::from_secs(6));
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kafka: consumer not connected"), "{body}");
    let (_, metrics) = http_get(addr, "/metrics");
    assert_eq!(metric(&metrics, "clevertap_deleter_kafka_connected"), 0.0);
    assert_eq!(
        metric(&metrics, "clevertap_deleter_partitions_assigned"),
        0.0
    );
    assert_eq!(
        metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
        0.0,
        "{metrics}"
    );
    let out = daemon.stop();
    assert_eq!(out.code, Some(0), "{}", tail(&out.all(), 12_000));
    assert!(
        !out.stderr.contains(secret),
        "the refused password was logged"
    );
    if let Some(line) = out.stderr.lines().find(|l| l.contains(expect_in_log[0])) {
        eprintln!("refused as expected: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_against_a_broker_without_sasl_is_reported_not_a_silent_stall() {
    // librdkafka's mock cluster does not implement SASL at all: a client that
    // insists on it must say so and stay not ready.
    let kafka = Kafka::new();
    let topic = unique("mock-sasl");
    kafka.topic(&topic, 1);
    kafka.topic(&format!("{topic}.dlq"), 1);
    let api = fake_api(15).await;
    let port = free_port();
    let text = sasl_daemon_config(
        &kafka.bootstrap,
        &topic,
        &unique("mock-sasl-group"),
        &api.endpoint(),
        port,
        "\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n",
    );
    let secret = "mock-sasl-pw-Zx7";
    tokio::task::block_in_place(|| {
        run_refused(
            &text,
            &[("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", secret)],
            port,
            &["Failed to initialize SASL authentication"],
            secret,
        )
    });
}
