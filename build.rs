//! Records what `/__version__` reports: the commit and where the build came from.
//!
//! `WHERESMYFOX_COMMIT`, `WHERESMYFOX_SOURCE` and `WHERESMYFOX_BUILD` (a CI job's URL), when set
//! at build time, win; otherwise the commit is asked of git, when the source is a checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn from_env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let commit = from_env("WHERESMYFOX_COMMIT").or_else(|| git(&["rev-parse", "HEAD"]));
    // Rebuild when this checkout's HEAD moves, and only then (not on every other branch's).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let (Some(common), Some(branch)) = (
            git(&["rev-parse", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            println!("cargo:rerun-if-changed={common}/{branch}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    let source = from_env("WHERESMYFOX_SOURCE")
        .or_else(|| git(&["config", "--get", "remote.origin.url"]))
        .unwrap_or_default();
    let build = from_env("WHERESMYFOX_BUILD").unwrap_or_default();
    println!(
        "cargo:rustc-env=WHERESMYFOX_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
    println!("cargo:rustc-env=WHERESMYFOX_SOURCE={source}");
    println!("cargo:rustc-env=WHERESMYFOX_BUILD={build}");
}
