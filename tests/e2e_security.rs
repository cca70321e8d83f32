//! TLS and SASL/SCRAM against Apache Kafka itself (no proxy in between): a
//! 1-node cluster started with `local-kafka start --sasl-ssl`, whose
//! SASL_SSL listener (SCRAM-SHA-512, a certificate from a CA of its own)
//! the daemon uses, while the test's own clients use the PLAINTEXT one.
//!
//! - the right password (from the environment, then from a 0600 file):
//!   every event deleted and committed, `/readyz` 200;
//! - a wrong password, a CA the daemon does not trust, a mechanism the
//!   listener does not offer: a clear error in the log, `/readyz` 503 the
//!   whole time, nothing consumed, a clean exit on SIGTERM;
//! - the password in no log line, at debug level with librdkafka's
//!   `security`, `broker` and `conf` debug contexts on.
//!
//! Fails when it cannot run (no Java, Maven or openssl), unless
//! `E2E_ALLOW_SKIP=1`; see docs/TESTING.md "Real-broker tests".

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/cgrp.rs"]
mod cgrp;
#[path = "e2e/check.rs"]
mod check;
mod common;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/local_kafka.rs"]
mod local_kafka;
#[path = "e2e/world.rs"]
mod world;

use std::time::{Duration, Instant};

use clevertap_deleter::testkit::fake_api::Faults;

use check::{verify, wait_fully_committed, Expected};
use daemon::{metric_sum, Api, Daemon};
use world::{ready, serial, World};

/// The daemon's properties for the SASL_SSL listener; the password comes
/// from elsewhere (environment or file).
fn sasl_properties(sasl: &local_kafka::Sasl, ca: &std::path::Path, mechanism: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanism\" = \"{mechanism}\"\n\"sasl.username\" = \"{}\"\n\
         \"ssl.ca.location\" = \"{}\"\n\"debug\" = \"security,broker,conf\"\n",
        sasl.bootstrap,
        sasl.user,
        ca.display()
    )
}

const LOG: (&str, &str) = ("RUST_LOG", "debug,librdkafka=debug");

/// Every log line (stderr and stdout) of a daemon.
fn all_output(d: &Daemon) -> String {
    let stdout =
        std::fs::read_to_string(d.stderr_path().with_file_name("stdout")).unwrap_or_default();
    d.logs() + &stdout
}

/// Runs a daemon that must be refused: the error in its log at WARN or
/// ERROR (every one of `expect` in one line), `/readyz` never 200 and 503 with the Kafka reason,
/// nothing consumed or assigned, exit 0 on SIGTERM, `secret` in no line.
fn refused(
    world: &World,
    api: &Api,
    name: &str,
    extra: &str,
    envs: &[(&str, &str)],
    expect: &[&str],
    secret: &str,
) -> String {
    let port = daemon::daemon_port();
    let config = world.config(api, port, extra);
    let mut d = Daemon::start(name, &config, port, envs);
    d.wait_serving();
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    // The error, and one statistics interval (5 s) for readiness to have
    // had every chance to turn green.
    let mut line = None;
    while line.is_none() || started.elapsed() < Duration::from_secs(7) {
        d.assert_running();
        *statuses.entry(ready(port)).or_insert(0) += 1;
        if line.is_none() {
            // What an operator sees at the default level: WARN or ERROR.
            line = d
                .logs()
                .lines()
                .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
                .find(|l| expect.iter().all(|e| l.contains(e)))
                .map(str::to_string);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "[{name}] no log line with {expect:?} within 60 s\n{}",
            d.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = daemon::http_get(port, "/readyz").expect("/readyz answers");
    let metrics = d.metrics().unwrap_or_default();
    let exit = d.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "[{name}] exit after SIGTERM: {exit}");
    assert!(
        !statuses.contains_key(&Some(200)),
        "[{name}] /readyz was 200 while the broker refused the daemon: {statuses:?}"
    );
    assert_eq!(status, 503, "[{name}] {body}");
    assert!(
        body.contains("kafka: consumer not connected"),
        "[{name}] {body}"
    );
    assert_eq!(
        common::metric(&metrics, "clevertap_deleter_kafka_connected"),
        0.0
    );
    assert_eq!(
        common::metric(&metrics, "clevertap_deleter_partitions_assigned"),
        0.0
    );
    assert_eq!(
        metric_sum(&metrics, "clevertap_deleter_events_consumed_total"),
        0.0
    );
    let output = all_output(&d);
    let leaked: Vec<&str> = output.lines().filter(|l| l.contains(secret)).collect();
    assert!(
        leaked.is_empty(),
        "[{name}] the password was logged: {leaked:?}"
    );
    let line = line.expect("error line");
    println!("[{name}] refused as expected; /readyz {statuses:?}; {line}");
    line
}

#[test]
fn e2e_security_sasl_scram_over_tls_against_kafka() {
    let _serial = serial();
    let Some(broker) = broker::own(1, true) else {
        return;
    };
    let sasl = broker
        .local_kafka()
        .sasl
        .clone()
        .expect("a --sasl-ssl cluster");
    let password = sasl.password();
    assert!(password.len() >= 16, "a real password");
    let world = World::new(broker, "sasl", 2);
    let (produced, _) = world.produce(2_000, 606);
    let expected = Expected::new(&produced);
    let api = Api::start(Duration::from_millis(5), Faults::default());
    let dir = daemon::scratch_dir("e2e-sasl-");

    // 1. The right password from the environment.
    let good = sasl_properties(&sasl, &sasl.ca, "SCRAM-SHA-512");
    let env = [
        ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", password.as_str()),
        LOG,
    ];
    let mut d = world.daemon_with("sasl-env", &api, &good, &env);
    let reader = world.broker.offsets_reader(&world.group);
    let took = wait_fully_committed(&reader, &expected, Duration::from_secs(90), &mut [&mut d]);
    let port = d.port;
    world::wait_until(
        "/readyz 200 over SASL_SSL",
        Duration::from_secs(30),
        &mut [&mut d],
        || ready(port) == Some(200),
    );
    let exit = d.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit}");
    let output = all_output(&d);
    assert!(
        output.contains("SASL_SSL") || output.contains("sasl_ssl"),
        "the daemon's librdkafka debug log shows the SASL_SSL connection"
    );
    let leaked: Vec<&str> = output.lines().filter(|l| l.contains(&password)).collect();
    assert!(
        leaked.is_empty(),
        "the SASL password was logged: {leaked:?}"
    );
    let outcome = verify(&world.broker, &expected, &api, &world.group, 10);
    println!(
        "[sasl env] {} debug log lines, none with the password; all committed in {took:.1?}; {outcome}",
        output.lines().count()
    );

    // 2. The right password from a 0600 file, under another group: the same.
    let pw_file = dir.path().join("kafka-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let file_group = format!("{}-file", world.group);
    let from_file = format!(
        "{good}[kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n",
        pw_file.display()
    );
    let from_file = common::merge_toml(
        &from_file,
        &format!("[kafka]\ngroup_id = \"{file_group}\"\n"),
    );
    let mut d = world.daemon_with("sasl-file", &api, &from_file, &[LOG]);
    let reader = world.broker.offsets_reader(&file_group);
    wait_fully_committed(&reader, &expected, Duration::from_secs(90), &mut [&mut d]);
    let exit = d.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit}");
    let output = all_output(&d);
    assert!(
        !output.lines().any(|l| l.contains(&password)),
        "the SASL password from the file was logged"
    );

    // 3. A wrong password: authentication fails, clearly.
    let wrong = "wrong-scram-Pw-7c1e09";
    let refused_group = |name: &str| format!("[kafka]\ngroup_id = \"{}-{name}\"\n", world.group);
    refused(
        &world,
        &api,
        "wrong-password",
        &common::merge_toml(&good, &refused_group("wrong")),
        &[("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", wrong), LOG],
        &["SASL authentication error", "invalid credentials"],
        wrong,
    );

    // 4. A CA the daemon does not trust: the TLS handshake fails, clearly.
    let stranger = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "untrusted test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    };
    let stranger_ca = dir.path().join("untrusted-ca.pem");
    std::fs::write(&stranger_ca, stranger).unwrap();
    let untrusted = sasl_properties(&sasl, &stranger_ca, "SCRAM-SHA-512");
    refused(
        &world,
        &api,
        "untrusted-ca",
        &common::merge_toml(&untrusted, &refused_group("untrusted")),
        &[
            ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", password.as_str()),
            LOG,
        ],
        // librdkafka's first report of it is either "SSL handshake failed:
        // ... certificate verify failed" or, as a transport failure, only
        // "... certificate verify failed (... in state SSL_HANDSHAKE)"; the
        // repeats are throttled, so the first is what the operator sees.
        &["certificate verify failed", "SSL_HANDSHAKE"],
        &password,
    );

    // 5. A mechanism the listener does not offer (it has SCRAM-SHA-512 only).
    let plain = sasl_properties(&sasl, &sasl.ca, "PLAIN");
    refused(
        &world,
        &api,
        "plain-mechanism",
        &common::merge_toml(&plain, &refused_group("plain")),
        &[
            ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", password.as_str()),
            LOG,
        ],
        &["SASL PLAIN mechanism handshake failed", "SCRAM-SHA-512"],
        &password,
    );
    assert!(api.violations().is_empty(), "{:?}", api.violations());
}
