//! Build metadata for `clevertap_deleter_build_info`: the git commit the
//! binary was built from. `CLEVERTAP_DELETER_GIT_COMMIT` set at build time
//! wins (container builds have no `.git`); otherwise `git rev-parse`, and
//! "unknown" when this is not a git checkout or git is missing.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLEVERTAP_DELETER_GIT_COMMIT");
    let commit = match std::env::var("CLEVERTAP_DELETER_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to,
            // and packed refs (only files that exist: a missing one would
            // rerun this script on every build).
            let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watched.push(branch);
            }
            for name in watched {
                if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                    if PathBuf::from(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    // Only hex digits (or "unknown") reach the label.
    let commit = if commit.chars().all(|c| c.is_ascii_hexdigit()) && commit.len() <= 40 {
        commit
    } else {
        "unknown".to_string()
    };
    println!("cargo:rustc-env=CLEVERTAP_DELETER_GIT_COMMIT={commit}");
}
