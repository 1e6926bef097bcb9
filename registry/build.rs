//! Bakes the git commit into every binary's `switchyard_build_info` metric.
//!
//! `SWITCHYARD_BUILD_COMMIT` wins (a container build has no `.git`: pass it as a build
//! argument); else `git rev-parse`; else "unknown".
//!
//! Every crate above the registry recompiles when this value changes. A release build
//! reruns it whenever HEAD or the branch it points to moves, so what ships is exact. A dev
//! build reruns it only when HEAD itself changes (a checkout, a branch switch), not on each
//! commit: otherwise every commit would rebuild the whole workspace and its tests.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHYARD_BUILD_COMMIT");
    let commit = match std::env::var("SWITCHYARD_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // A worktree's HEAD lives in its own git dir, the branch refs in the common one.
            let dirs = [
                git(&["rev-parse", "--git-dir"]),
                git(&["rev-parse", "--git-common-dir"]),
            ];
            let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
            let branch = git(&["symbolic-ref", "-q", "HEAD"]).filter(|_| release);
            for dir in dirs.iter().flatten() {
                let dir = PathBuf::from(dir);
                for file in ["HEAD".to_owned(), "packed-refs".to_owned()]
                    .into_iter()
                    .chain(branch.clone())
                {
                    let path = dir.join(file);
                    if path.exists() {
                        println!("cargo:rerun-if-changed={}", path.display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=SWITCHYARD_BUILD_COMMIT={commit}");
}
