//! The README is the operator's manual, and the developer documents live in
//! docs/: the README's sections come in the order an operator needs them, the
//! Kubernetes deployment is found early, developer sections are not in it,
//! and every link in README.md and docs/*.md (and every `README.md#anchor` or
//! `docs/*.md#anchor` named in the repository's files) leads somewhere.

mod common;

use common::{read, repo_path};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MAX_README_LINES: usize = 1800;
/// The Kubernetes section starts within this share of the README's lines.
const KUBERNETES_WITHIN: f64 = 0.40;
/// Anchors that stand for "some anchor" in prose.
const PLACEHOLDERS: [&str; 2] = ["name", "anchor"];
const DEVELOPER_DOCS: [&str; 3] = ["docs/TESTING.md", "docs/PERFORMANCE.md", "docs/DESIGN.md"];

/// A heading outside code blocks: (line index, level, text).
fn headings(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let level = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            out.push((i, level, line[level + 1..].trim().to_string()));
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, every character but letters,
/// digits, spaces, `-` and `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a Markdown file, with GitHub's `-1`, `-2` for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, _, heading) in headings(text) {
        let base = slug(&heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// Link targets `](target)` outside code blocks, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((i + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// Problems with the links of one Markdown file (relative to the repository).
fn broken_links(file: &str) -> Vec<String> {
    let text = read(file);
    let own = anchors(&text);
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (line, target) in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        if path.is_empty() {
            let anchor = anchor.unwrap_or_default();
            if !own.contains(anchor) {
                problems.push(format!("{file}:{line}: no heading for #{anchor}"));
            }
            continue;
        }
        let full = repo_path(&dir.join(path).to_string_lossy());
        if !full.exists() {
            problems.push(format!("{file}:{line}: {path} does not exist"));
            continue;
        }
        if let (Some(anchor), true) = (anchor, path.ends_with(".md")) {
            let other = std::fs::read_to_string(&full).expect("readable Markdown");
            if !anchors(&other).contains(anchor) {
                problems.push(format!(
                    "{file}:{line}: {path} has no heading for #{anchor}"
                ));
            }
        }
    }
    problems
}

fn markdown_docs() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo_path("docs"))
        .expect("docs/ exists")
        .map(|e| format!("docs/{}", e.expect("entry").file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The top-level (`##`) sections of the README: (line index, title).
fn sections(readme: &str) -> Vec<(usize, String)> {
    headings(readme)
        .into_iter()
        .filter(|(_, level, _)| *level == 2)
        .map(|(i, _, t)| (i, t))
        .collect()
}

/// The text of the README's `## title` section, up to the next `##`.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no `## {title}`"));
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 3);
    &body[..end]
}

#[test]
fn readme_sections_come_in_the_operators_order() {
    let readme = read("README.md");
    let titles: Vec<String> = sections(&readme).into_iter().map(|(_, t)| t).collect();
    let order = [
        "Contents",
        "Quick start",
        "Running against a real cluster",
        "Configuration",
        "Operations",
        "Dead-letter topic",
        "Metrics and endpoints",
        "Security",
        "For developers",
        "Not yet",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|o| {
            titles
                .iter()
                .position(|t| t == o)
                .unwrap_or_else(|| panic!("README has no `## {o}`: {titles:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "README sections out of order: {titles:?}, expected {order:?}"
    );
    // Every top-level section is in the Contents list.
    let contents = section(&readme, "Contents");
    for title in titles.iter().filter(|t| *t != "Contents") {
        assert!(
            contents.contains(&format!("](#{})", slug(title))),
            "Contents does not link `## {title}`"
        );
    }
}

#[test]
fn readme_finds_kubernetes_early() {
    let readme = read("README.md");
    let total = readme.lines().count();
    let (line, _, title) = headings(&readme)
        .into_iter()
        .find(|(_, level, t)| *level <= 3 && t.contains("Kubernetes"))
        .expect("README has a Kubernetes section");
    assert!(
        (line as f64) < total as f64 * KUBERNETES_WITHIN,
        "`{title}` starts at line {} of {total}: after the first {:.0} %",
        line + 1,
        KUBERNETES_WITHIN * 100.0
    );
    let contents = section(&readme, "Contents");
    assert!(
        contents.contains(&format!("](#{})", slug(&title))),
        "Contents does not link `{title}`"
    );
    // Within Operations, deploying comes first.
    let operations = section(&readme, "Operations");
    let first = headings(operations)
        .into_iter()
        .find(|(_, level, _)| *level == 3)
        .expect("Operations has subsections");
    assert_eq!(first.2, title, "the first subsection of Operations");
    for overlay in ["statefulset", "deployment"] {
        assert!(
            readme.contains(&format!(
                "kubectl apply -k deploy/kubernetes/overlays/{overlay}"
            )),
            "{overlay}"
        );
    }
}

#[test]
fn developer_content_lives_in_docs() {
    let readme = read("README.md");
    let total = readme.lines().count();
    assert!(
        total <= MAX_README_LINES,
        "README.md has {total} lines, more than {MAX_README_LINES}: developer content goes to docs/"
    );
    for (_, _, title) in headings(&readme) {
        let lower = title.to_lowercase();
        for word in [
            "testing",
            "performance",
            "design",
            "real-broker tests",
            "broker quirks",
            "property tests",
        ] {
            assert!(
                !lower.contains(word),
                "README has the developer section `{title}`: it belongs in docs/"
            );
        }
    }
    for doc in DEVELOPER_DOCS {
        assert!(repo_path(doc).exists(), "{doc} is missing");
        assert!(
            readme.contains(&format!("]({doc})")),
            "README does not link {doc} (For developers)"
        );
    }
    let testing = read("docs/TESTING.md");
    for heading in ["Real-broker tests", "Broker quirks", "Property tests"] {
        assert!(
            headings(&testing)
                .iter()
                .any(|(_, _, t)| t.starts_with(heading)),
            "docs/TESTING.md has no `{heading}` section"
        );
    }
    assert!(!testing.contains("MEASURED_TABLE"), "a placeholder left in");
}

#[test]
fn quick_start_commands_are_the_ones_that_work() {
    let readme = read("README.md");
    let quick = section(&readme, "Quick start");
    let block = quick
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("Quick start opens with a sh block");
    // The two set-up commands: the demo, then the tests.
    assert_eq!(block, "cargo run --release -- demo\ncargo test\n");
    for built in [
        "cargo build --release",
        "./target/release/clevertap-deleter demo",
    ] {
        assert!(quick.contains(built), "Quick start shows `{built}`");
    }
    assert!(
        section(&readme, "For developers").contains("`cargo test`"),
        "For developers names the test command"
    );
}

#[test]
fn every_link_in_readme_and_docs_resolves() {
    let mut problems = Vec::new();
    for file in markdown_docs() {
        problems.extend(broken_links(&file));
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

/// `README.md#anchor` and `docs/NAME.md#anchor` in any file of the repository
/// (alert runbooks, comments, test messages) name a heading that exists.
#[test]
fn anchors_named_anywhere_exist() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["deploy", "src", "tests", "config", "docs", "benches"] {
        walk(&repo_path(dir), &mut files);
    }
    files.push(repo_path("README.md"));
    let mut docs = markdown_docs();
    docs.retain(|d| d != "README.md");
    docs.push("README.md".to_string());
    let mut problems = Vec::new();
    let mut seen = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // not text
        };
        for doc in &docs {
            let needle = format!("{doc}#");
            for (at, _) in text.match_indices(&needle) {
                // `docs/TESTING.md#` also ends in `TESTING.md#`; `README.md#`
                // preceded by a directory is another README.
                let before = &text[..at];
                if doc == "README.md" && before.ends_with('/') {
                    continue;
                }
                let anchor: String = text[at + needle.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
                    .collect();
                // Placeholders in prose (`README.md#name`) and code that
                // strips the prefix.
                if anchor.is_empty() || PLACEHOLDERS.contains(&anchor.as_str()) {
                    continue;
                }
                seen += 1;
                if !anchors(&read(doc)).contains(&anchor) {
                    problems.push(format!("{}: {doc}#{anchor}", file.display()));
                }
            }
        }
    }
    assert!(
        seen >= 18,
        "the alert runbooks alone name 18 anchors: {seen}"
    );
    assert!(
        problems.is_empty(),
        "anchors with no heading:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_checker_knows_githubs_rules() {
    assert_eq!(slug("Files under deploy/"), "files-under-deploy");
    assert_eq!(
        slug("What the tests prove (`tests/security.rs`, `tests/e2e_security.rs`)"),
        "what-the-tests-prove-testssecurityrs-testse2e_securityrs"
    );
    assert_eq!(slug("`[regions.NAME]`"), "regionsname");
    assert_eq!(
        slug("Broker quirks: what was tansu's, what was ours"),
        "broker-quirks-what-was-tansus-what-was-ours"
    );
    let a = anchors("# A\n## A\n```\n# B\n```\n## A\n");
    assert_eq!(a, BTreeSet::from(["a".into(), "a-1".into(), "a-2".into()]));
    assert_eq!(
        links("see [x](#y) and [z](docs/A.md#b)\n```\n[no](#c)\n```\n"),
        [(1, "#y".to_string()), (1, "docs/A.md#b".to_string())]
    );
}

/// The text of the README's `#### name` runbook, up to the next heading.
fn runbook<'a>(readme: &'a str, name: &str) -> &'a str {
    let start = readme
        .find(&format!("\n#### {name}\n"))
        .unwrap_or_else(|| panic!("README has no runbook for {name}"));
    let body = &readme[start + 1..];
    let end = body[4..].find("\n#").map_or(body.len(), |e| e + 4);
    &body[..end]
}

#[test]
fn runbooks_agree_with_the_rules_and_the_metrics_table() {
    let readme = read("README.md");
    let rules = read("deploy/prometheus/alerts.yaml");
    // CommitFailures: the runbook names the series the rule watches, and the
    // metrics table lists that metric with that label and value.
    let rule = rules
        .split("- alert: CleverTapDeleterCommitFailures\n")
        .nth(1)
        .expect("the CommitFailures rule");
    let expr = rule
        .lines()
        .find_map(|l| l.trim().strip_prefix("expr:"))
        .expect("its expr");
    let series = "clevertap_deleter_commits_total{result=\"failure\"}";
    assert!(expr.contains(series), "{expr}");
    assert!(
        runbook(&readme, "CleverTapDeleterCommitFailures").contains(series),
        "the CommitFailures runbook names {series}"
    );
    let row = section(&readme, "Metrics and endpoints")
        .lines()
        .find(|l| l.starts_with("| `clevertap_deleter_commits_total` |"))
        .expect("the metrics table lists commits_total");
    assert!(
        row.contains("| counter | `result` |") && row.contains("`failure`"),
        "{row}"
    );
    // DeadLetters: the runbook says how to replay them.
    let dead = runbook(&readme, "CleverTapDeleterDeadLetters");
    assert!(dead.contains("replay-dlq"), "{dead}");
    assert!(dead.contains("](#replaying-dead-letters)"), "{dead}");
}
