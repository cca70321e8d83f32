//! The compiled daemon, running against an in-process Kafka (MockCluster) and
//! the fake CleverTap API, scraped where the ServiceMonitor scrapes it:
//! - every metric that deploy/ uses (alert rules, dashboard queries and
//!   variables, KEDA Prometheus triggers) is in the scrape, with series;
//! - `promtool check metrics` has nothing to say about the scrape;
//! - the README's metrics reference lists exactly the exported metrics, with
//!   their types and label names.

mod common;
mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use live::*;

/// The README's metrics reference: name -> (type, label names).
fn readme_reference() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let readme = read("README.md");
    let section = readme
        .split("\n## Metrics and endpoints")
        .nth(1)
        .expect("README has a `## Metrics and endpoints` section");
    let section = section.split("\n## ").next().unwrap();
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let name = cells[0].trim_matches('`').to_string();
        let is_metric = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_metric {
            continue; // the endpoints table
        }
        assert!(cells.len() >= 4, "a reference row has 4 cells: {row}");
        let labels: BTreeSet<String> = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            out.insert(name.clone(), (cells[1].to_string(), labels))
                .is_none(),
            "{name} is listed twice"
        );
    }
    out
}

/// Differences between the README's reference and a scrape, both ways.
fn reference_problems(scrape: &str) -> Vec<String> {
    let exported = families(scrape);
    let documented = readme_reference();
    let mut out = Vec::new();
    for (name, f) in &exported {
        match documented.get(name) {
            None => out.push(format!(
                "{name} ({}, labels {:?}) is exported but not in the README's reference",
                f.kind, f.labels
            )),
            Some((kind, labels)) => {
                if kind != &f.kind {
                    out.push(format!(
                        "{name}: the README says {kind}, the scrape {}",
                        f.kind
                    ));
                }
                if labels != &f.labels {
                    out.push(format!(
                        "{name}: the README lists labels {labels:?}, the scrape has {:?}",
                        f.labels
                    ));
                }
            }
        }
    }
    for name in documented.keys() {
        if !exported.contains_key(name) {
            out.push(format!(
                "{name} is in the README's reference but not exported"
            ));
        }
    }
    out
}

#[test]
fn promql_names_are_read_as_prometheus_reads_them() {
    let names = |q: &str| -> Vec<String> { promql_metric_names(q).into_iter().collect() };
    assert_eq!(
        names(
            r#"sum by (region, status) (rate(clevertap_deleter_api_requests_total{region=~"$region", status="429"}[$__rate_interval])) / ignoring(status) group_left sum without (le) (x_total offset 5m) > 0.1 and on(instance) up{job="a"} == 1"#
        ),
        ["clevertap_deleter_api_requests_total", "up", "x_total"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket[30m:1m]))) > 3600"),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        names(r#"count(max by (region) (held{region=~"$region"}) == 1) or vector(0)"#),
        ["held"]
    );
    assert_eq!(
        names("process_resident_memory_bytes / on() group_left() kube_pod_container_resource_limits{resource=\"memory\"} * 1e3"),
        ["kube_pod_container_resource_limits", "process_resident_memory_bytes"]
    );
    // Everything in deploy/ is found: a good share of metric names.
    let queries = deploy_queries();
    assert!(queries.len() >= 50, "{} queries", queries.len());
    let all: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| promql_metric_names(q))
        .collect();
    assert!(all.len() >= 25, "{all:?}");
    assert!(all.contains("up") && all.contains("clevertap_deleter_build_info"));
    // A name the daemon does not export is reported, with where it is used.
    let scrape = "# TYPE clevertap_deleter_region_held gauge\nclevertap_deleter_region_held{region=\"eu1\"} 0\n";
    let missing = missing_metrics(scrape);
    assert!(
        missing.iter().any(|m| m
            .starts_with("clevertap_deleter_ids_deleted_total is not exported")
            && m.contains("deploy/grafana")),
        "{missing:?}"
    );
    assert!(!missing
        .iter()
        .any(|m| m.starts_with("clevertap_deleter_region_held ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_has_every_metric_deploy_uses_passes_promtool_and_matches_the_readme() {
    let Some(promtool) = require_tool("promtool", "PROMETHEUS_ALLOW_SKIP") else {
        return;
    };
    let kafka = Kafka::new();
    let topic = unique("live-metrics");
    kafka.topic(&topic, 2);
    kafka.topic(&format!("{topic}.dlq"), 1);
    let group = unique("live-metrics-group");
    let api = fake_api(15).await;
    let mut events = simple_events(60, |i| REGIONS[i % 3]);
    events[7].payload = b"not json".to_vec();
    kafka.produce(&topic, &events, |i| (i % 2) as i32).await;

    let port = free_port();
    let toml = config_toml(
        &kafka.bootstrap,
        &topic,
        &group,
        &api.endpoint(),
        &format!(
            "[kafka.properties]\n\"statistics.interval.ms\" = \"500\"\n[server]\nlisten = \"127.0.0.1:{port}\""
        ),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start("daemon", dir.path(), &toml, port);
    let client = http_client();
    daemon.wait_metrics(&client, Duration::from_secs(60)).await;

    // Every event finished and committed: every code path has run once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let committed = tokio::task::block_in_place(|| kafka.committed(&group, &topic, 2));
        if committed == [30, 30] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Where the ServiceMonitor scrapes. The lag series appear with the
    // assignment; wait for them if the first scrape came before.
    let path = service_monitor_path();
    let mut scrape = String::new();
    let mut missing = vec!["no scrape yet".to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() && Instant::now() < deadline {
        let r = client.get(daemon.url(&path)).send().await.expect("scrape");
        assert_eq!(r.status(), 200, "GET {path}");
        scrape = r.text().await.unwrap();
        missing = missing_metrics(&scrape);
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut problems: Vec<String> = missing
        .iter()
        .map(|m| format!("deploy/ uses {m}"))
        .collect();

    // The scrape reflects the run: one dead letter, 59 deletions, a lag of 0.
    assert_eq!(
        metric_sum(&scrape, "clevertap_deleter_dead_letters_total"),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric_sum(&scrape, "clevertap_deleter_ids_deleted_total"),
        59.0
    );
    assert!(scrape.contains(&format!(
        "clevertap_deleter_consumer_lag_messages{{partition=\"0\",topic=\"{topic}\"}}"
    )));

    // promtool's lint: no complaint at all.
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        problems.push(format!("promtool check metrics ({}): {said}", out.status));
    }

    problems.extend(reference_problems(&scrape));
    daemon.kill();
    assert!(
        problems.is_empty(),
        "{}\n--- scrape\n{scrape}",
        problems.join("\n")
    );
}

#[test]
fn the_reference_check_finds_undocumented_missing_and_mislabelled_metrics() {
    // A scrape built from the README itself passes.
    let reference = readme_reference();
    assert!(
        reference.len() >= 35,
        "{} metrics documented",
        reference.len()
    );
    let scrape_of = |reference: &BTreeMap<String, (String, BTreeSet<String>)>| -> String {
        let mut out = String::new();
        for (name, (kind, labels)) in reference {
            let labels: Vec<String> = labels.iter().map(|l| format!("{l}=\"x\"")).collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            if kind == "histogram" {
                out.push_str(&format!("{name}_count{labels} 0\n"));
            } else {
                out.push_str(&format!("{name}{labels} 0\n"));
            }
        }
        out
    };
    assert_eq!(
        reference_problems(&scrape_of(&reference)),
        Vec::<String>::new()
    );

    let mut changed = reference.clone();
    changed.remove("clevertap_deleter_region_held");
    changed.insert(
        "clevertap_deleter_brand_new_total".into(),
        ("counter".into(), BTreeSet::new()),
    );
    changed
        .get_mut("clevertap_deleter_ids_deleted_total")
        .unwrap()
        .1
        .insert("tenant".into());
    changed
        .get_mut("clevertap_deleter_consumer_paused")
        .unwrap()
        .0 = "counter".into();
    let problems = reference_problems(&scrape_of(&changed)).join("\n");
    for expected in [
        "clevertap_deleter_region_held is in the README's reference but not exported",
        "clevertap_deleter_brand_new_total (counter, labels {}) is exported but not in the README's reference",
        "clevertap_deleter_ids_deleted_total: the README lists labels",
        "clevertap_deleter_consumer_paused: the README says gauge, the scrape counter",
    ] {
        assert!(problems.contains(expected), "{expected}\n--- got\n{problems}");
    }
}
