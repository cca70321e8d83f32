//! The README's first command: `clevertap-deleter demo`, run as a new user would.

use std::process::Command;

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clevertap-deleter"))
        .arg("demo")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run the demo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn number_after(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"));
    line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in `{line}`"))
}

#[test]
fn demo_runs_the_pipeline_and_explains_what_happened() {
    let (code, out, err) = demo(&["--events", "3000"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("in-process Kafka"), "{out}");
    assert!(out.contains("fake CleverTap API"), "{out}");
    assert_eq!(number_after(&out, "events consumed"), 3000);
    let deleted = number_after(&out, "deleted");
    let dedup = number_after(&out, "duplicates absorbed");
    let dead = number_after(&out, "dead-lettered");
    assert_eq!(deleted + dedup + dead, 3000, "{out}");
    assert!(dedup > 300, "about 20% repeats are absorbed: {out}");
    assert!(dead > 0, "{out}");
    // Plain words, not debug maps.
    let ids = out.lines().find(|l| l.contains("ids deleted")).unwrap();
    assert!(
        ids.contains("eu1 ") && ids.contains("in1 ") && ids.contains("us1 "),
        "{ids}"
    );
    assert!(!out.contains('{') && !out.contains('}'), "{out}");
    assert!(out.contains("ids a successful call"), "{out}");
    assert!(out.contains("API calls"), "{out}");
    assert!(out.contains("not_json="), "dead letters by reason: {out}");
    assert!(out.contains("verified: all"), "{out}");
    assert!(out.contains("0 sent more than once"), "{out}");
    // Not a terminal: plain progress lines, no carriage returns.
    assert!(!out.contains('\r'));
}

#[test]
fn demo_with_injected_faults_still_deletes_everything() {
    let (code, out, _) = demo(&[
        "--events",
        "4000",
        "--fail-rate",
        "0.2",
        "--throttle-rate",
        "0.2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("injected faults: 20% of API calls answer 5xx, 20% answer 429"));
    assert!(out.contains("429:"), "the answers include 429s: {out}");
    assert!(out.contains("verified: all"), "{out}");
}

#[test]
fn demo_with_cloudevents_deletes_everything() {
    let (code, out, err) = demo(&["--events", "3000", "--cloudevents"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("as CloudEvents"), "{out}");
    assert_eq!(number_after(&out, "events consumed"), 3000);
    assert!(
        out.contains("invalid_cloudevent="),
        "dead letters by reason: {out}"
    );
    assert!(out.contains("verified: all"), "{out}");
}

#[test]
fn demo_refuses_a_fault_rate_of_one() {
    let (code, _, err) = demo(&["--fail-rate", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--fail-rate"), "{err}");
}

#[test]
fn a_demo_larger_than_the_in_process_kafka_keeps_is_produced_while_consumed() {
    // One partition keeps 5 MiB: 40,000 events (about 8 MB) produced at once
    // lose their oldest records before they are read. The demo produces
    // while it consumes, so every id is still verified.
    let (code, out, err) = demo(&["--events", "40000", "--partitions", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("verified: all"), "{out}");
    assert!(!out.contains("LOST"), "{out}");
}
