//! The house rules of `src/`, read from the source text (see ARCHITECTURE.md):
//! no import circles between files, the pure core imports nothing outside
//! itself, the outcome leaf imports nothing of the crate, the configuration
//! only the core, and no source file much over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// "About 600 lines": a file may pass it by a little, not by a room.
const MAX_LINES: usize = 680;

fn src_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            src_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`; `src/lib.rs` -> ``.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The modules a file refers to through `crate::...` and `super::...` paths.
fn references(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent(module))] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            let path: String = rest[i + prefix.len()..]
                .chars()
                .take_while(|c| ident(*c))
                .collect();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut segments = base.clone();
            segments.extend(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            // The longest prefix that is a module of the crate.
            while !segments.is_empty() {
                let candidate = segments.join("::");
                if modules.contains(&candidate) {
                    if candidate != module && !module.starts_with(&format!("{candidate}::")) {
                        out.insert(candidate);
                    }
                    break;
                }
                segments.pop();
            }
        }
    }
    out
}

fn parent(module: &str) -> Vec<String> {
    let mut parts: Vec<String> = module.split("::").map(str::to_string).collect();
    parts.pop();
    parts
}

struct House {
    /// module -> (file, lines, modules it refers to)
    modules: BTreeMap<String, (PathBuf, usize, BTreeSet<String>)>,
}

fn house() -> House {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    src_files(&root, &mut files);
    let names: BTreeSet<String> = files.iter().map(|f| module_of(&root, f)).collect();
    let mut modules = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let m = module_of(&root, &f);
        let refs = references(&m, &text, &names);
        modules.insert(m, (f, text.lines().count(), refs));
    }
    House { modules }
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_circles_between_files() {
    let house = house();
    assert!(house.modules.len() > 30, "{} modules", house.modules.len());
    let edges: BTreeMap<String, BTreeSet<String>> = house
        .modules
        .iter()
        .map(|(m, (_, _, refs))| (m.clone(), refs.clone()))
        .collect();
    // The check sees a circle when there is one.
    let mut planted = edges.clone();
    planted
        .entry("domain::outcome".into())
        .or_default()
        .insert("ops::metrics".into());
    assert!(
        !circles(&planted).is_empty(),
        "a planted circle was not found: is ops::metrics -> domain::outcome read?"
    );
    let found = circles(&edges);
    assert!(found.is_empty(), "import circles: {found:?}");
}

#[test]
fn the_core_and_the_configuration_stay_below_everything_else() {
    let house = house();
    for (module, (file, _, refs)) in &house.modules {
        let allowed: &[&str] = if module == "domain::outcome" {
            &[]
        } else if module.starts_with("domain") {
            &["domain"]
        } else if module.starts_with("config") {
            &["domain", "config"]
        } else {
            continue;
        };
        let outside: Vec<&String> = refs
            .iter()
            .filter(|r| !allowed.iter().any(|a| r.split("::").next() == Some(a)))
            .collect();
        assert!(
            outside.is_empty(),
            "{} ({module}) may use only {allowed:?} of the crate, uses {outside:?}",
            file.display()
        );
    }
}

#[test]
fn no_source_file_is_much_over_600_lines() {
    let house = house();
    let big: Vec<String> = house
        .modules
        .values()
        .filter(|(_, lines, _)| *lines > MAX_LINES)
        .map(|(f, lines, _)| format!("{} ({lines} lines)", f.display()))
        .collect();
    assert!(big.is_empty(), "files over {MAX_LINES} lines: {big:?}");
}
