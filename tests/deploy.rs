//! deploy/: the Kubernetes manifests and the Dockerfile agree with the code
//! and with each other.
//!
//! The manifests are a kustomize tree (deploy/kubernetes: base, components,
//! overlays). Every overlay is rendered with kustomize (`kustomize build`, or
//! `kubectl kustomize`; `KUSTOMIZE=/path/to/kustomize` picks a binary) and
//! the checks read what `kubectl apply -k` would apply. The configuration the
//! pods would run with is what `clevertap-deleter check-config` makes of the
//! rendered ConfigMap plus the container's environment.

mod common;

use common::{read, repo_path};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use clevertap_deleter::config;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_clevertap-deleter");
const KUBERNETES: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/Dockerfile";
const BASE_CONFIG: &str = "deploy/kubernetes/base/config.toml";
const APP: &str = "clevertap-deleter";
const APP_LABEL: &str = "app.kubernetes.io/name";
const ENV_PREFIX: &str = "CLEVERTAP_DELETER__";
const KAFKA_ENV_PREFIX: &str = "CLEVERTAP_DELETER_KAFKA_";
const CONFIG_PATH: &str = "/etc/clevertap-deleter/config.toml";
/// CleverTap accepts about this many concurrent requests per account, over all replicas.
const CLEVERTAP_ACCOUNT_CONCURRENCY: u64 = 15;
/// Closing the consumer after the drain may take up to this long (README, Graceful shutdown).
const CONSUMER_CLOSE_SECS: u64 = 30;
/// Peak resident memory of the daemon while 500,000 events drain (README,
/// Performance: "113 to 126 MiB").
const MEASURED_PEAK_MIB: u64 = 126;
/// The memory request: the measured peak plus a margin.
const MEMORY_REQUEST_MIN_MIB: u64 = 160;
/// README, Backpressure and memory: with the defaults "well under 256 MiB".
const MEMORY_LIMIT_MIN_MIB: u64 = 256;
// The margin: at least a quarter above the peak.
const _: () = assert!(MEMORY_REQUEST_MIN_MIB >= MEASURED_PEAK_MIB * 5 / 4);

/// One way to deploy: an overlay under deploy/kubernetes/overlays.
#[derive(Clone, Copy, Debug)]
struct Overlay {
    name: &'static str,
    /// The workload's kind.
    kind: &'static str,
    /// Scaled by KEDA (a ScaledObject owns the replica count).
    keda: bool,
}

const OVERLAYS: [Overlay; 4] = [
    Overlay {
        name: "statefulset",
        kind: "StatefulSet",
        keda: false,
    },
    Overlay {
        name: "statefulset-keda",
        kind: "StatefulSet",
        keda: true,
    },
    Overlay {
        name: "deployment",
        kind: "Deployment",
        keda: false,
    },
    Overlay {
        name: "deployment-keda",
        kind: "Deployment",
        keda: true,
    },
];

// ---------------------------------------------------------------- files

/// Every file under `dir` (relative to the repository), sorted, as relative paths.
fn files_under(dir: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under the repository");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = repo_path("");
    let mut out = Vec::new();
    walk(&root, &repo_path(dir), &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------- YAML

fn yaml_key(key: &Yaml) -> String {
    match key {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("unsupported YAML key {other:?}"),
    }
}

/// A YAML node as JSON, to read it with JSON pointers.
fn yaml_to_json(node: &Yaml) -> Value {
    match node {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML node {node:?}"),
    }
}

/// The documents of a YAML stream (empty documents left out).
fn parse_yaml(text: &str, what: &str) -> Vec<Value> {
    YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        .iter()
        .map(yaml_to_json)
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The single document of a YAML file.
fn yaml_file(relative: &str) -> Value {
    let mut docs = parse_yaml(&read(relative), relative);
    assert_eq!(docs.len(), 1, "{relative} holds one document");
    docs.remove(0)
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {}", describe(value)))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    at(value, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} is not a string in {}", describe(value)))
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    at(value, pointer)
        .as_u64()
        .unwrap_or_else(|| panic!("{pointer} is not a number in {}", describe(value)))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    at(value, pointer)
        .as_array()
        .unwrap_or_else(|| panic!("{pointer} is not a list in {}", describe(value)))
}

/// `Kind/name` of a manifest, for messages.
fn describe(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc.pointer("/kind").and_then(Value::as_str).unwrap_or("?"),
        doc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// A `matchLabels` map as (key, value) pairs.
fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("labels are not a map: {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
        .collect()
}

/// Whether a label selector's `matchLabels` selects pods with these labels.
fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

/// A memory quantity (`160Mi`, `1Gi`, `512M`, `1000`) in MiB, rounded down.
fn mebibytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("memory quantity {quantity}"));
    let bytes = match unit {
        "" => number,
        "Ki" => number << 10,
        "Mi" => number << 20,
        "Gi" => number << 30,
        "k" => number * 1_000,
        "M" => number * 1_000_000,
        "G" => number * 1_000_000_000,
        _ => panic!("unsupported memory unit in {quantity}"),
    };
    bytes >> 20
}

// ---------------------------------------------------------------- kustomize

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The kustomize command line up to the directory: `$KUSTOMIZE build`,
/// `kustomize build` or `kubectl kustomize`.
fn kustomize_command() -> Vec<String> {
    if let Some(bin) = std::env::var_os("KUSTOMIZE") {
        return vec![bin.to_string_lossy().to_string(), "build".to_string()];
    }
    if let Some(bin) = on_path("kustomize") {
        return vec![bin.to_string_lossy().to_string(), "build".to_string()];
    }
    if let Some(bin) = on_path("kubectl") {
        return vec![bin.to_string_lossy().to_string(), "kustomize".to_string()];
    }
    panic!(
        "tests/deploy.rs renders deploy/kubernetes with kustomize: install kubectl or \
         kustomize (.ci/run does), or set KUSTOMIZE to a kustomize binary"
    )
}

/// What kustomize makes of the kustomization in `dir`.
fn render_dir(dir: &Path) -> Vec<Value> {
    let command = kustomize_command();
    let output = Command::new(&command[0])
        .args(&command[1..])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_yaml(
        &String::from_utf8(output.stdout).expect("UTF-8"),
        &format!("kustomize output of {}", dir.display()),
    )
}

/// Every overlay, rendered once per test run.
fn rendered(overlay: &Overlay) -> &'static [Value] {
    static RENDERED: OnceLock<BTreeMap<&'static str, Vec<Value>>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|o| {
                let dir = repo_path(&format!("{KUBERNETES}/overlays/{}", o.name));
                (o.name, render_dir(&dir))
            })
            .collect()
    })[overlay.name]
        .as_slice()
}

fn all_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d.pointer("/kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn one_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn workload<'a>(docs: &'a [Value], overlay: &Overlay) -> &'a Value {
    one_of(docs, overlay.kind)
}

/// The daemon's container of a workload.
fn container(workload: &Value) -> &Value {
    let containers = array_at(workload, "/spec/template/spec/containers");
    assert_eq!(
        containers.len(),
        1,
        "one container in {}",
        describe(workload)
    );
    assert_eq!(str_at(&containers[0], "/name"), APP);
    &containers[0]
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(at(workload, "/spec/template/metadata/labels"))
}

/// The container's environment, as the daemon would see it: literal values;
/// the pod name (first pod) for `fieldRef: metadata.name`; placeholders for
/// Secret values.
fn container_env(workload: &Value) -> Vec<(String, String)> {
    let Some(env) = container(workload).pointer("/env") else {
        return Vec::new();
    };
    env.as_array()
        .expect("env is a list")
        .iter()
        .map(|var| {
            let name = str_at(var, "/name").to_string();
            let value = if let Some(v) = var.pointer("/value") {
                v.as_str().expect("env value is a string").to_string()
            } else if let Some(field) = var.pointer("/valueFrom/fieldRef/fieldPath") {
                assert_eq!(field, "metadata.name", "{name}: only the pod name is used");
                format!("{}-0", str_at(workload, "/metadata/name"))
            } else if let Some(key) = var.pointer("/valueFrom/secretKeyRef/key") {
                format!("placeholder-from-the-secret-{}", key.as_str().unwrap())
            } else {
                panic!("{name}: unsupported env source {var}")
            };
            (name, value)
        })
        .collect()
}

/// The rendered ConfigMap's config.toml.
fn config_text(docs: &[Value]) -> String {
    str_at(one_of(docs, "ConfigMap"), "/data/config.toml").to_string()
}

// ---------------------------------------------------------------- check-config

struct CheckConfig {
    ok: bool,
    /// The effective configuration (secrets redacted), when `ok`.
    effective: toml::Table,
    stderr: String,
}

/// Runs `clevertap-deleter check-config` on `config` with exactly `env` from
/// the environment (inherited `CLEVERTAP_DELETER…` variables removed).
fn check_config(config: &str, env: &[(String, String)]) -> CheckConfig {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(BIN);
    cmd.args(["check-config", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CLEVERTAP_DELETER") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let output = cmd.output().expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let ok = output.status.success();
    CheckConfig {
        ok,
        effective: if ok {
            stdout
                .parse()
                .unwrap_or_else(|e| panic!("check-config output is not TOML: {e}\n{stdout}"))
        } else {
            toml::Table::new()
        },
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// The configuration the pods of an overlay run with.
fn effective_config(overlay: &Overlay) -> toml::Table {
    let docs = rendered(overlay);
    let run = check_config(&config_text(docs), &container_env(workload(docs, overlay)));
    assert!(
        run.ok,
        "{}: check-config refuses the ConfigMap with the container's environment: {}",
        overlay.name, run.stderr
    );
    run.effective
}

fn toml_at<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(*key)?.as_table()?;
    }
    current.get(*last)
}

fn toml_str<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    toml_at(table, path)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string {} in\n{table}", path.join(".")))
}

fn toml_u64(table: &toml::Table, path: &[&str]) -> u64 {
    toml_at(table, path)
        .and_then(toml::Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
        .unwrap_or_else(|| panic!("no number {} in\n{table}", path.join(".")))
}

// ---------------------------------------------------------------- layout

/// Files a kustomization names (resources, components, generator files),
/// relative to the repository, following directories.
fn kustomization_files(dir: &str, out: &mut BTreeSet<String>) {
    let file = format!("{dir}/kustomization.yaml");
    let kustomization = yaml_file(&file);
    out.insert(file.clone());
    let mut entries: Vec<String> = Vec::new();
    for list in ["/resources", "/components"] {
        if let Some(items) = kustomization.pointer(list) {
            for item in items.as_array().expect("a list") {
                entries.push(item.as_str().expect("a path").to_string());
            }
        }
    }
    if let Some(generators) = kustomization.pointer("/configMapGenerator") {
        for generator in generators.as_array().expect("a list") {
            for f in generator
                .pointer("/files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                entries.push(f.as_str().expect("a path").to_string());
            }
        }
    }
    for entry in entries {
        let path = repo_path(dir).join(&entry);
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("{file} names {entry}, which does not exist: {e}"));
        let relative = path
            .strip_prefix(repo_path("").canonicalize().unwrap())
            .expect("inside the repository")
            .to_string_lossy()
            .to_string();
        if path.is_dir() {
            kustomization_files(&relative, out);
        } else {
            out.insert(relative);
        }
    }
}

#[test]
fn every_overlay_renders_one_workload_and_the_shared_resources() {
    let overlays: BTreeSet<String> =
        std::fs::read_dir(repo_path(&format!("{KUBERNETES}/overlays")))
            .expect("deploy/kubernetes/overlays")
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
    let known: BTreeSet<String> = OVERLAYS.iter().map(|o| o.name.to_string()).collect();
    assert_eq!(overlays, known, "the overlays this test knows");

    // Every manifest is used by some overlay, and every file a kustomization
    // names exists.
    let mut used = BTreeSet::new();
    for overlay in &OVERLAYS {
        kustomization_files(
            &format!("{KUBERNETES}/overlays/{}", overlay.name),
            &mut used,
        );
    }
    kustomization_files(
        &format!("{KUBERNETES}/components/servicemonitor"),
        &mut used,
    );
    for file in files_under(KUBERNETES) {
        if file.ends_with("/secret.example.yaml") {
            continue; // Not applied: the real Secret comes from a secret store.
        }
        assert!(used.contains(&file), "{file} is part of no overlay");
    }

    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
        let mut expected = vec![
            "ConfigMap",
            "Service",
            overlay.kind,
            "PodDisruptionBudget",
            "NetworkPolicy",
        ];
        if overlay.keda {
            expected.push("ScaledObject");
        }
        let kinds: BTreeSet<&str> = kinds.into_iter().collect();
        let expected: BTreeSet<&str> = expected.into_iter().collect();
        assert_eq!(kinds, expected, "{}", overlay.name);
        assert_eq!(docs.len(), expected.len(), "{}: one of each", overlay.name);
        for doc in docs {
            assert_eq!(
                str_at(
                    doc,
                    &format!("/metadata/labels/{}", APP_LABEL.replace('/', "~1"))
                ),
                APP,
                "{}: {} carries the app label",
                overlay.name,
                describe(doc)
            );
        }
    }
}

// ---------------------------------------------------------------- workloads

#[test]
fn statefulset_members_are_static_and_deployment_members_dynamic() {
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let env = container(w)
            .pointer("/env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let instance_id = env
            .iter()
            .find(|v| str_at(v, "/name") == "CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID");
        let effective = effective_config(overlay);
        let effective_id = toml_at(&effective, &["kafka", "group_instance_id"]);
        if overlay.kind == "StatefulSet" {
            // The pod name: stable across restarts, unique among live pods.
            let var = instance_id.unwrap_or_else(|| {
                panic!(
                    "{}: no CLEVERTAP_DELETER__KAFKA__GROUP_INSTANCE_ID",
                    overlay.name
                )
            });
            assert_eq!(
                str_at(var, "/valueFrom/fieldRef/fieldPath"),
                "metadata.name",
                "{}: group_instance_id is the pod name",
                overlay.name
            );
            assert_eq!(
                effective_id.and_then(toml::Value::as_str),
                Some("clevertap-deleter-0"),
                "{}: the daemon reads it as kafka.group_instance_id",
                overlay.name
            );
            // Pods start and stop together: with OrderedReady a pod that is
            // not ready (a held region makes all of them) would block the
            // creation of the next ones.
            assert_eq!(str_at(w, "/spec/podManagementPolicy"), "Parallel");
            // Updates replace pods one at a time under the same names: no
            // surge, no two pods with one id.
            assert_eq!(str_at(w, "/spec/updateStrategy/type"), "RollingUpdate");
            assert_eq!(
                w.pointer("/spec/updateStrategy/rollingUpdate/partition")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                0,
                "{}: every pod is updated",
                overlay.name
            );
            // The governing Service exists in the same overlay.
            let service = one_of(docs, "Service");
            assert_eq!(
                str_at(w, "/spec/serviceName"),
                str_at(service, "/metadata/name")
            );
        } else {
            // A Deployment's pods get new names on every update: dynamic members.
            assert!(
                instance_id.is_none() && effective_id.is_none(),
                "{}: a Deployment must not use static membership",
                overlay.name
            );
        }
        // A static member's partitions wait session.timeout.ms for it: set
        // above the rebalance drain, and explicitly (the README's advice).
        let session: u64 = toml_str(&effective, &["kafka", "properties", "session.timeout.ms"])
            .parse()
            .expect("session.timeout.ms is a number");
        let drain = toml_u64(&effective, &["pipeline", "rebalance_drain_timeout_ms"]);
        assert!(
            session > drain,
            "{}: session.timeout.ms {session} must exceed rebalance_drain_timeout_ms {drain}",
            overlay.name
        );
        assert!(toml_at(&effective, &["kafka", "properties", "group.instance.id"]).is_none());
    }
}

#[test]
fn keda_owns_the_replica_count_of_the_workload_it_scales() {
    // The workload files never carry a count: `kubectl apply` would put it
    // back over KEDA's.
    for file in [
        "deploy/kubernetes/components/statefulset/statefulset.yaml",
        "deploy/kubernetes/components/deployment/deployment.yaml",
    ] {
        let doc = yaml_file(file);
        assert!(
            doc.pointer("/spec/replicas").is_none(),
            "{file} sets replicas"
        );
    }
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let kustomization = yaml_file(&format!(
            "{KUBERNETES}/overlays/{}/kustomization.yaml",
            overlay.name
        ));
        let scaled = all_of(docs, "ScaledObject");
        if overlay.keda {
            assert!(
                w.pointer("/spec/replicas").is_none(),
                "{}: the workload KEDA scales has a replica count",
                overlay.name
            );
            assert!(kustomization.pointer("/replicas").is_none());
            let so = scaled[0];
            assert_eq!(str_at(so, "/spec/scaleTargetRef/kind"), overlay.kind);
            assert_eq!(
                str_at(so, "/spec/scaleTargetRef/name"),
                str_at(w, "/metadata/name")
            );
            assert_eq!(str_at(so, "/spec/scaleTargetRef/apiVersion"), "apps/v1");
            let min = u64_at(so, "/spec/minReplicaCount");
            let max = u64_at(so, "/spec/maxReplicaCount");
            assert!(1 <= min && min <= max, "{}: {min}..{max}", overlay.name);
        } else {
            assert!(scaled.is_empty(), "{}", overlay.name);
            assert!(
                u64_at(w, "/spec/replicas") >= 1,
                "{}: a fixed replica count",
                overlay.name
            );
        }
    }
}

#[test]
fn every_overlay_keeps_the_concurrency_budget() {
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let per_replica = toml_u64(&effective_config(overlay), &["api", "max_concurrency"]);
        let most_replicas = if overlay.keda {
            u64_at(one_of(docs, "ScaledObject"), "/spec/maxReplicaCount")
        } else {
            u64_at(w, "/spec/replicas")
        };
        assert!(
            most_replicas * per_replica <= CLEVERTAP_ACCOUNT_CONCURRENCY,
            "{}: {most_replicas} replicas x max_concurrency {per_replica} > {CLEVERTAP_ACCOUNT_CONCURRENCY}",
            overlay.name
        );
        if overlay.kind == "Deployment" {
            // A surge pod during a rolling update would exceed the budget.
            assert_eq!(
                at(w, "/spec/strategy/rollingUpdate/maxSurge"),
                &Value::from(0),
                "{}",
                overlay.name
            );
        } else {
            // A StatefulSet deletes a pod before it creates its replacement.
            assert!(w
                .pointer("/spec/updateStrategy/rollingUpdate/maxSurge")
                .is_none());
        }
    }
}

/// How a ScaledObject's Kafka trigger differs from the daemon's effective
/// configuration (brokers, group, topic).
fn keda_mismatches(scaled: &Value, effective: &toml::Table) -> Vec<String> {
    let triggers = array_at(scaled, "/spec/triggers");
    let mut out = Vec::new();
    if triggers.len() != 1 || str_at(&triggers[0], "/type") != "kafka" {
        out.push(format!("expected one kafka trigger, got {triggers:?}"));
        return out;
    }
    let meta = at(&triggers[0], "/metadata");
    let get = |key: &str| meta.pointer(&format!("/{key}")).and_then(Value::as_str);
    let brokers = toml_str(effective, &["kafka", "brokers"]);
    if get("bootstrapServers") != Some(brokers) {
        out.push(format!(
            "bootstrapServers {:?} is not kafka.brokers {brokers:?}",
            get("bootstrapServers")
        ));
    }
    let group = toml_str(effective, &["kafka", "group_id"]);
    if get("consumerGroup") != Some(group) {
        out.push(format!(
            "consumerGroup {:?} is not kafka.group_id {group:?}",
            get("consumerGroup")
        ));
    }
    let topics: Vec<&str> = toml_at(effective, &["kafka", "topics"])
        .and_then(toml::Value::as_array)
        .expect("kafka.topics")
        .iter()
        .map(|t| t.as_str().expect("topic"))
        .collect();
    if !get("topic").is_some_and(|t| topics.contains(&t)) {
        out.push(format!(
            "topic {:?} is not one of kafka.topics {topics:?}",
            get("topic")
        ));
    }
    out
}

#[test]
fn keda_watches_the_brokers_group_and_topic_of_the_configmap() {
    for overlay in OVERLAYS.iter().filter(|o| o.keda) {
        let docs = rendered(overlay);
        let scaled = one_of(docs, "ScaledObject");
        let effective = effective_config(overlay);
        assert_eq!(
            keda_mismatches(scaled, &effective),
            Vec::<String>::new(),
            "{}: the ScaledObject and base/config.toml disagree",
            overlay.name
        );
        // The check notices a change to one side only.
        for (key, changed) in [
            ("brokers", toml::Value::from("kafka-0.elsewhere:9093")),
            ("group_id", toml::Value::from("another-group")),
            ("topics", toml::Value::from(vec!["another-topic"])),
        ] {
            let mut other = effective.clone();
            other["kafka"]
                .as_table_mut()
                .unwrap()
                .insert(key.to_string(), changed);
            assert_eq!(keda_mismatches(scaled, &other).len(), 1, "{key}");
        }
    }
}

// ---------------------------------------------------------------- ConfigMap

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// The name of the ConfigMap a workload mounts.
fn mounted_configmap(w: &Value) -> String {
    let volumes = array_at(w, "/spec/template/spec/volumes");
    let names: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.pointer("/configMap/name").and_then(Value::as_str))
        .collect();
    assert_eq!(names.len(), 1, "one ConfigMap volume in {}", describe(w));
    names[0].to_string()
}

#[test]
fn a_configuration_change_renames_the_configmap_and_rolls_the_pods() {
    // kustomize generates the ConfigMap with a hash of its content in the
    // name, and writes that name into the pod template.
    let base = yaml_file(&format!("{KUBERNETES}/base/kustomization.yaml"));
    let generators = array_at(&base, "/configMapGenerator");
    assert_eq!(generators.len(), 1);
    assert_eq!(str_at(&generators[0], "/name"), APP);
    assert_eq!(
        array_at(&generators[0], "/files"),
        &vec![Value::from("config.toml")]
    );
    for pointer in [
        "/generatorOptions/disableNameSuffixHash",
        "/configMapGenerator/0/options/disableNameSuffixHash",
    ] {
        assert_ne!(
            base.pointer(pointer),
            Some(&Value::Bool(true)),
            "{pointer}: without the hash a change would not roll the pods"
        );
    }
    let config = read(BASE_CONFIG);
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let configmap = one_of(docs, "ConfigMap");
        let name = str_at(configmap, "/metadata/name");
        let hash = name
            .strip_prefix("clevertap-deleter-")
            .unwrap_or_else(|| panic!("{}: ConfigMap {name} has no hash suffix", overlay.name));
        assert!(
            hash.len() >= 8 && hash.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}"
        );
        assert_eq!(
            config_text(docs),
            config,
            "the ConfigMap holds base/config.toml"
        );
        let w = workload(docs, overlay);
        assert_eq!(mounted_configmap(w), name, "{}", overlay.name);
        // Mounted where the container's command line reads it.
        let c = container(w);
        let mount = array_at(c, "/volumeMounts")
            .iter()
            .find(|m| str_at(m, "/name") == "config")
            .expect("config volume mount");
        assert_eq!(
            format!("{}/config.toml", str_at(mount, "/mountPath")),
            CONFIG_PATH
        );
        let args: Vec<&str> = array_at(c, "/args")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args, ["run", "--config", CONFIG_PATH], "{}", overlay.name);
    }

    // Change the configuration in a copy of the tree: the ConfigMap's name
    // and the pod template change with it.
    let copy = tempfile::tempdir().expect("temp dir");
    copy_tree(&repo_path(KUBERNETES), copy.path());
    let before = render_dir(&copy.path().join("overlays/statefulset"));
    let changed = format!("{config}\n# any change, even a comment\n");
    std::fs::write(copy.path().join("base/config.toml"), changed).unwrap();
    let after = render_dir(&copy.path().join("overlays/statefulset"));
    let name = |docs: &[Value]| str_at(one_of(docs, "ConfigMap"), "/metadata/name").to_string();
    let template = |docs: &[Value]| at(one_of(docs, "StatefulSet"), "/spec/template").clone();
    assert_ne!(name(&before), name(&after), "a new ConfigMap name");
    assert_ne!(template(&before), template(&after), "a new pod template");
    assert_eq!(
        mounted_configmap(one_of(&after, "StatefulSet")),
        name(&after)
    );
}

// ---------------------------------------------------------------- resources, spread, budget

#[test]
fn memory_request_covers_the_measured_peak() {
    assert!(
        read("README.md").contains(&format!("113 to {MEASURED_PEAK_MIB} MiB")),
        "the README states the measured peak this test uses"
    );
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let c = container(workload(docs, overlay));
        let request = mebibytes(str_at(c, "/resources/requests/memory"));
        let limit = mebibytes(str_at(c, "/resources/limits/memory"));
        assert!(
            request >= MEMORY_REQUEST_MIN_MIB,
            "{}: memory request {request} MiB is below the measured peak ({MEASURED_PEAK_MIB} MiB) plus margin",
            overlay.name
        );
        assert!(
            limit >= request && limit >= MEMORY_LIMIT_MIN_MIB,
            "{}: memory limit {limit} MiB",
            overlay.name
        );
        assert!(c.pointer("/resources/requests/cpu").is_some());
    }
    assert_eq!(mebibytes("160Mi"), 160);
    assert_eq!(mebibytes("1Gi"), 1024);
    assert_eq!(mebibytes("512M"), 488);
}

#[test]
fn pods_spread_over_nodes() {
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let pods = pod_labels(w);
        let constraints = array_at(w, "/spec/template/spec/topologySpreadConstraints");
        let by_host = constraints
            .iter()
            .find(|c| str_at(c, "/topologyKey") == "kubernetes.io/hostname")
            .unwrap_or_else(|| panic!("{}: no spread over kubernetes.io/hostname", overlay.name));
        assert_eq!(u64_at(by_host, "/maxSkew"), 1);
        for c in constraints {
            // Soft: a pod is never left pending for the spread.
            assert_eq!(str_at(c, "/whenUnsatisfiable"), "ScheduleAnyway");
            assert!(
                selects(&labels(at(c, "/labelSelector/matchLabels")), &pods),
                "{}: the spread counts this workload's pods",
                overlay.name
            );
        }
    }
}

#[test]
fn the_budget_service_and_policy_select_the_pods_of_either_workload() {
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let pods = pod_labels(w);
        assert!(selects(&labels(at(w, "/spec/selector/matchLabels")), &pods));

        let pdb = one_of(docs, "PodDisruptionBudget");
        assert!(
            selects(&labels(at(pdb, "/spec/selector/matchLabels")), &pods),
            "{}: the PodDisruptionBudget covers the {}",
            overlay.name,
            overlay.kind
        );
        // One pod at a time, and never a budget that blocks drains (a single
        // replica, or every replica not ready because a region is held).
        assert_eq!(at(pdb, "/spec/maxUnavailable"), &Value::from(1));
        assert!(pdb.pointer("/spec/minAvailable").is_none());
        assert_eq!(
            str_at(pdb, "/spec/unhealthyPodEvictionPolicy"),
            "AlwaysAllow"
        );

        let service = one_of(docs, "Service");
        assert!(selects(&labels(at(service, "/spec/selector")), &pods));
        assert_eq!(
            at(service, "/spec/publishNotReadyAddresses"),
            &Value::Bool(true)
        );
        let policy = one_of(docs, "NetworkPolicy");
        assert!(selects(
            &labels(at(policy, "/spec/podSelector/matchLabels")),
            &pods
        ));
    }
}

// ---------------------------------------------------------------- NetworkPolicy

/// (port, protocol) pairs of a NetworkPolicy rule.
fn rule_ports(rule: &Value) -> BTreeSet<(String, String)> {
    array_at(rule, "/ports")
        .iter()
        .map(|p| {
            let port = match at(p, "/port") {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                other => panic!("port {other}"),
            };
            let protocol = p
                .pointer("/protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            (port, protocol)
        })
        .collect()
}

fn pair(port: &str, protocol: &str) -> (String, String) {
    (port.to_string(), protocol.to_string())
}

#[test]
fn network_policy_admits_only_scrapes_and_lets_out_only_dns_kafka_and_https() {
    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let policy = one_of(docs, "NetworkPolicy");
        let types: BTreeSet<&str> = array_at(policy, "/spec/policyTypes")
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]));

        // In: the metrics port, from the monitoring namespace only.
        let ingress = array_at(policy, "/spec/ingress");
        assert_eq!(ingress.len(), 1, "one ingress rule");
        let from = array_at(&ingress[0], "/from");
        assert_eq!(from.len(), 1);
        assert_eq!(
            labels(at(&from[0], "/namespaceSelector/matchLabels")),
            BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string()
            )])
        );
        assert!(from[0].pointer("/ipBlock").is_none());
        assert_eq!(
            rule_ports(&ingress[0]),
            BTreeSet::from([pair("metrics", "TCP")])
        );
        // `metrics` is the container port the daemon listens on.
        let effective = effective_config(overlay);
        let listen: std::net::SocketAddr = toml_str(&effective, &["server", "listen"])
            .parse()
            .expect("server.listen");
        let ports = array_at(container(workload(docs, overlay)), "/ports");
        assert!(ports.iter().any(|p| str_at(p, "/name") == "metrics"
            && u64_at(p, "/containerPort") == u64::from(listen.port())));

        // Out: DNS, Kafka, HTTPS; nothing else.
        let egress = array_at(policy, "/spec/egress");
        let allowed: BTreeSet<(String, String)> = egress.iter().flat_map(rule_ports).collect();
        assert_eq!(
            allowed,
            BTreeSet::from([
                pair("53", "UDP"),
                pair("53", "TCP"),
                pair("9092", "TCP"),
                pair("9093", "TCP"),
                pair("443", "TCP"),
            ]),
            "{}",
            overlay.name
        );
        // The configured brokers and every region's endpoint are reachable.
        for broker in toml_str(&effective, &["kafka", "brokers"]).split(',') {
            let port = broker.rsplit(':').next().unwrap().trim();
            assert!(
                allowed.contains(&pair(port, "TCP")),
                "broker {broker} is not allowed out"
            );
        }
        let regions = toml_at(&effective, &["regions"])
            .and_then(toml::Value::as_table)
            .expect("regions");
        for (name, region) in regions {
            let endpoint = region
                .get("endpoint")
                .and_then(toml::Value::as_str)
                .or_else(|| config::default_endpoint(name))
                .unwrap_or_else(|| panic!("region {name} has no endpoint"));
            let url = url::Url::parse(endpoint).expect("endpoint URL");
            let port = url.port_or_known_default().unwrap().to_string();
            assert!(
                allowed.contains(&pair(&port, "TCP")),
                "region {name}: {endpoint} is not allowed out"
            );
        }
    }
}

// ---------------------------------------------------------------- ports, paths, keys

#[test]
fn manifests_use_the_port_paths_and_config_keys_of_the_code() {
    let default_listen = config::ServerSettings::default().listen;
    assert!(default_listen.ends_with(":9464"), "{default_listen}");
    assert!(read(DOCKERFILE).contains("EXPOSE 9464"));
    let secret = yaml_file(&format!("{KUBERNETES}/secret.example.yaml"));
    let monitor = yaml_file(&format!(
        "{KUBERNETES}/components/servicemonitor/servicemonitor.yaml"
    ));
    assert_eq!(str_at(&monitor, "/kind"), "ServiceMonitor");
    let endpoints = array_at(&monitor, "/spec/endpoints");
    assert_eq!(str_at(&endpoints[0], "/port"), "metrics");
    assert_eq!(str_at(&endpoints[0], "/path"), "/metrics");

    for overlay in &OVERLAYS {
        let docs = rendered(overlay);
        let w = workload(docs, overlay);
        let c = container(w);
        let effective = effective_config(overlay);

        // The port: the ConfigMap, the container, the Service, the monitor.
        let listen = toml_str(&effective, &["server", "listen"]);
        assert!(listen.ends_with(":9464"), "{listen}");
        let ports = array_at(c, "/ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(str_at(&ports[0], "/name"), "metrics");
        assert_eq!(u64_at(&ports[0], "/containerPort"), 9464);
        let service = one_of(docs, "Service");
        let service_ports = array_at(service, "/spec/ports");
        assert_eq!(str_at(&service_ports[0], "/name"), "metrics");
        assert_eq!(u64_at(&service_ports[0], "/port"), 9464);
        assert_eq!(str_at(&service_ports[0], "/targetPort"), "metrics");
        assert!(selects(
            &labels(at(&monitor, "/spec/selector/matchLabels")),
            &labels(at(service, "/metadata/labels"))
        ));

        // Probes on the paths the server routes.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(str_at(c, &format!("/{probe}/httpGet/path")), path);
            assert_eq!(str_at(c, &format!("/{probe}/httpGet/port")), "metrics");
        }

        // Every CLEVERTAP_DELETER__… variable names a real key (check-config
        // refuses unknown keys, see effective_config) and lands where its name
        // says; the Secret's passcodes are what make the ConfigMap valid.
        let env = container_env(w);
        let mut names = BTreeSet::new();
        for (name, value) in &env {
            names.insert(name.clone());
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest
                .to_ascii_lowercase()
                .split("__")
                .map(String::from)
                .collect();
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let shown = toml_at(&effective, &path)
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| {
                    panic!(
                        "{name}: no key {} in the effective configuration",
                        path.join(".")
                    )
                });
            assert!(
                shown == value || shown == "<redacted>",
                "{name}: {shown} != {value}"
            );
        }
        assert!(names.contains("CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE"));
        let config = config_text(docs);
        let bare = check_config(&config, &[]);
        assert!(
            !bare.ok && bare.stderr.contains("passcode"),
            "without the Secret's variables the ConfigMap lacks passcodes: {}",
            bare.stderr
        );
        let mut misspelled = env.clone();
        misspelled.push((
            "CLEVERTAP_DELETER__REGIONS__EU1__PASSCOD".to_string(),
            "x".to_string(),
        ));
        assert!(
            !check_config(&config, &misspelled).ok,
            "a misspelled key is refused"
        );

        // The Secret example provides every key the container reads.
        for var in array_at(c, "/env") {
            if let Some(key) = var.pointer("/valueFrom/secretKeyRef/key") {
                let key = key.as_str().unwrap();
                assert_eq!(
                    str_at(var, "/valueFrom/secretKeyRef/name"),
                    str_at(&secret, "/metadata/name")
                );
                assert!(
                    secret.pointer(&format!("/stringData/{key}")).is_some(),
                    "secret.example.yaml lacks {key}"
                );
            }
        }

        // SIGTERM grace: above the drain deadline plus the consumer's close.
        let grace = u64_at(w, "/spec/template/spec/terminationGracePeriodSeconds");
        let drain = toml_u64(&effective, &["pipeline", "shutdown_timeout_ms"]) / 1000;
        assert!(
            grace > drain + CONSUMER_CLOSE_SECS,
            "{}: terminationGracePeriodSeconds {grace} must exceed {drain} s + {CONSUMER_CLOSE_SECS} s",
            overlay.name
        );

        // Non-root (the image's user), no privilege escalation, read-only root.
        let pod = at(w, "/spec/template/spec");
        assert_eq!(at(pod, "/securityContext/runAsNonRoot"), &Value::Bool(true));
        let uid = u64_at(pod, "/securityContext/runAsUser");
        assert!(uid > 0);
        assert!(
            read(DOCKERFILE).contains(&format!("USER {uid}:")),
            "the Dockerfile's USER is {uid}"
        );
        assert_eq!(
            at(c, "/securityContext/allowPrivilegeEscalation"),
            &Value::Bool(false)
        );
        assert_eq!(
            at(c, "/securityContext/readOnlyRootFilesystem"),
            &Value::Bool(true)
        );
        assert_eq!(
            at(pod, "/automountServiceAccountToken"),
            &Value::Bool(false)
        );
    }
}

// ---------------------------------------------------------------- documentation

/// The numbers written right after `word` (`word: 75`, `word (75)`, `word 75`).
fn numbers_after(text: &str, word: &str) -> Vec<u64> {
    text.match_indices(word)
        .filter_map(|(at, _)| {
            let rest = text[at + word.len()..].trim_start_matches([':', ' ', '(', '`', '=']);
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn documentation_states_the_grace_period_and_kafka_credentials_as_they_are() {
    // One grace period, and every file that names it names that one.
    let graces: BTreeSet<u64> = OVERLAYS
        .iter()
        .map(|o| {
            u64_at(
                workload(rendered(o), o),
                "/spec/template/spec/terminationGracePeriodSeconds",
            )
        })
        .collect();
    assert_eq!(graces.len(), 1, "{graces:?}");
    let grace = *graces.iter().next().unwrap();
    let mut documents: Vec<String> = files_under(KUBERNETES);
    documents.extend(["config/example.toml".to_string(), "README.md".to_string()]);
    for file in &documents {
        for n in numbers_after(&read(file), "terminationGracePeriodSeconds") {
            assert_eq!(n, grace, "{file} gives terminationGracePeriodSeconds {n}");
        }
    }
    let example = read("config/example.toml");
    assert!(
        !numbers_after(&example, "terminationGracePeriodSeconds").is_empty(),
        "config/example.toml names the Kubernetes grace period next to shutdown_timeout_ms"
    );
    assert_eq!(numbers_after("a: 75, b (45) and c 7", "b"), [45]);

    // Kafka credentials can come from the environment: the files say so,
    // name only variables the code reads, and the Kubernetes configuration
    // takes them.
    let known: BTreeSet<&str> = config::KAFKA_ENV_PROPERTIES
        .iter()
        .map(|(var, _)| *var)
        .collect();
    let mut documents: Vec<String> = files_under("deploy");
    documents.extend(["config/example.toml".to_string(), "README.md".to_string()]);
    for file in &documents {
        let Ok(text) = std::fs::read_to_string(repo_path(file)) else {
            continue; // not text
        };
        assert!(
            !text.contains("cannot come from the environment"),
            "{file} says Kafka credentials cannot come from the environment"
        );
        for (at, _) in text.match_indices(KAFKA_ENV_PREFIX) {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                known.contains(name.as_str()),
                "{file} names {name}, which the daemon does not read"
            );
        }
    }
    assert!(read(BASE_CONFIG).contains("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD"));
    let overlay = &OVERLAYS[0];
    let docs = rendered(overlay);
    let mut env = container_env(workload(docs, overlay));
    env.push((
        "CLEVERTAP_DELETER_KAFKA_SASL_USERNAME".to_string(),
        "clevertap-deleter".to_string(),
    ));
    env.push((
        "CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD".to_string(),
        "from-the-secret".to_string(),
    ));
    let run = check_config(&config_text(docs), &env);
    assert!(run.ok, "{}", run.stderr);
    // Values from the environment are set, and always redacted.
    for property in ["sasl.username", "sasl.password"] {
        assert_eq!(
            toml_str(&run.effective, &["kafka", "properties", property]),
            "<redacted>",
            "{property}"
        );
    }
}

#[test]
fn readme_lists_every_file_under_deploy_kubernetes() {
    let readme = read("README.md");
    for file in files_under(KUBERNETES) {
        assert!(
            readme.contains(&file),
            "README.md does not mention {file} (Operations, Deploying on Kubernetes)"
        );
    }
    for overlay in &OVERLAYS {
        assert!(readme.contains(&format!(
            "kubectl apply -k deploy/kubernetes/overlays/{}",
            overlay.name
        )));
    }
}

// ---------------------------------------------------------------- Dockerfile

/// Why an image reference is not pinned, if it is not: a digest, or a tag
/// with a full version (`1.95.0`) or a snapshot date (`20260918`).
fn unpinned(image: &str) -> Option<String> {
    if image.contains("@sha256:") {
        return None;
    }
    let Some((_, tag)) = image.rsplit_once(':') else {
        return Some(format!("{image} has no tag"));
    };
    let full_version = tag.split(['-', '_']).any(|part| {
        let numbers: Vec<&str> = part.split('.').collect();
        numbers.len() == 3
            && numbers
                .iter()
                .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    });
    let dated = tag
        .split('-')
        .any(|part| part.len() == 8 && part.chars().all(|c| c.is_ascii_digit()));
    if full_version || dated {
        None
    } else {
        Some(format!(
            "{image}: the tag {tag} moves (no full version or date)"
        ))
    }
}

/// Cargo.toml's `rust-version` or a `1.95.0`-style version as (major, minor).
fn major_minor(version: &str) -> (u64, u64) {
    let mut parts = version
        .split('.')
        .map(|p| p.parse::<u64>().expect("number"));
    (parts.next().unwrap(), parts.next().unwrap())
}

#[test]
fn the_image_is_built_without_debug_info_on_pinned_base_images() {
    for (image, pinned) in [
        ("rust:1.95.0-slim-bookworm", true),
        ("debian:bookworm-20260918-slim", true),
        ("debian:bookworm-slim@sha256:0123", true),
        ("rust:1-bookworm", false),
        ("rust:1.95-slim-bookworm", false),
        ("debian:bookworm-slim", false),
        ("debian:latest", false),
        ("debian", false),
    ] {
        assert_eq!(unpinned(image).is_none(), pinned, "{image}");
    }

    let dockerfile = read(DOCKERFILE);
    let mut stages = BTreeSet::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("FROM ") else {
            continue;
        };
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let image = words[0];
        if !stages.contains(image) {
            images.push(image.to_string());
        }
        if let [_, as_, name] = words.as_slice() {
            assert!(as_.eq_ignore_ascii_case("as"));
            stages.insert(name.to_string());
        }
    }
    assert_eq!(
        images.len(),
        2,
        "a build stage and a runtime stage: {images:?}"
    );
    for image in &images {
        assert_eq!(unpinned(image), None);
    }
    // The build stage's Rust is at least the project's rust-version, and both
    // stages run the same Debian release (the binary links its glibc).
    let cargo: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let msrv = major_minor(toml_str(&cargo, &["package", "rust-version"]));
    let builder = images
        .iter()
        .find_map(|i| i.strip_prefix("rust:"))
        .expect("a rust: build stage");
    assert!(
        major_minor(builder.split('-').next().unwrap()) >= msrv,
        "{builder}"
    );
    let runtime = images
        .iter()
        .find_map(|i| i.strip_prefix("debian:"))
        .expect("a debian: runtime stage");
    let codename = runtime.split('-').next().unwrap();
    assert!(
        builder.contains(codename),
        "build stage {builder} and runtime {runtime} run different Debian releases"
    );

    // The image's binary comes from the `dist` profile: release without debug info.
    assert!(dockerfile.contains("cargo build --profile dist --locked"));
    assert!(dockerfile.contains("target/dist/clevertap-deleter"));
    assert!(!dockerfile.contains("--release"));
    let dist = toml_at(&cargo, &["profile", "dist"])
        .and_then(toml::Value::as_table)
        .expect("[profile.dist] in Cargo.toml");
    assert_eq!(
        dist.get("inherits").and_then(toml::Value::as_str),
        Some("release")
    );
    let debug = dist.get("debug").expect("profile.dist.debug");
    assert!(
        [
            toml::Value::from(0),
            toml::Value::from(false),
            toml::Value::from("none")
        ]
        .contains(debug),
        "profile.dist.debug = {debug}"
    );
    let strip = dist.get("strip").expect("profile.dist.strip");
    assert!(
        [
            toml::Value::from(true),
            toml::Value::from("symbols"),
            toml::Value::from("debuginfo")
        ]
        .contains(strip),
        "profile.dist.strip = {strip}"
    );
    // The build context leaves out the (large) target directory.
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}
