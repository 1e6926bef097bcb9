//! Every flag and `SWITCHYARD_*` variable used under `deploy/` exists in the `--help` of the
//! binary it is given to, so deployment files and binaries cannot drift apart unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_tests::bin_path;

const BINARIES: [&str; 4] = [
    "switchyard-router",
    "switchyard-gateway",
    "switchyard-agent",
    "switchyardctl",
];

fn help(bin: &str) -> String {
    let mut text = String::new();
    let out = Command::new(bin_path(bin))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{bin} --help failed");
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if bin == "switchyardctl" {
        for sub in ["gateways", "route", "drain", "undrain", "watch", "top"] {
            let out = Command::new(bin_path(bin))
                .args([sub, "--help"])
                .output()
                .expect("run help");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    text
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Flags per binary and env variables mentioned in one file. A flag belongs to the binary
/// named most recently before it in the file (YAML `command:`/`args:` lists included).
fn usage(text: &str) -> (BTreeMap<&'static str, BTreeSet<String>>, BTreeSet<String>) {
    let mut flags: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut envs = BTreeSet::new();
    let mut current: Option<&'static str> = None;
    let tokens = text.split(|c: char| {
        c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '[' | ']' | '(' | ')' | ';')
    });
    for token in tokens {
        let name = token.rsplit('/').next().unwrap_or(token);
        if let Some(bin) = BINARIES.iter().find(|b| name == **b) {
            current = Some(bin);
            continue;
        }
        if let Some(flag) = token.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or("");
            // `---` (a YAML document separator) is not a flag.
            let valid = flag.starts_with(|c: char| c.is_ascii_lowercase())
                && flag.chars().all(|c| c.is_ascii_lowercase() || c == '-');
            if let (true, Some(bin)) = (valid, current) {
                flags.entry(bin).or_default().insert(format!("--{flag}"));
            }
        }
        let mut rest = token;
        while let Some(i) = rest.find("SWITCHYARD_") {
            let var: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + var.len()..];
            envs.insert(var);
        }
    }
    (flags, envs)
}

#[test]
fn every_flag_and_variable_under_deploy_exists_in_the_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let helps: BTreeMap<&str, String> = BINARIES.iter().map(|b| (*b, help(b))).collect();
    let mut paths = Vec::new();
    files(&root.join("deploy"), &mut paths);
    assert!(paths.len() >= 5, "deploy/ has its files");
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in &paths {
        // Dockerfiles only copy the binaries; their own options (`COPY --from`) are not ours.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("Dockerfile"))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let (flags, envs) = usage(&text);
        for (bin, flags) in flags {
            for flag in flags {
                checked += 1;
                let present = helps[bin]
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                    .any(|w| w == flag);
                if !present {
                    problems.push(format!("{}: {bin} has no {flag}", path.display()));
                }
            }
        }
        for var in envs {
            checked += 1;
            let in_help = helps.values().any(|h| h.contains(&format!("env: {var}")));
            if !in_help {
                problems.push(format!("{}: no binary reads {var}", path.display()));
            }
        }
    }
    assert!(checked > 20, "the scan found the deploy flags ({checked})");
    assert!(
        problems.is_empty(),
        "deploy/ drifted from the binaries:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_attributes_flags_to_the_right_binary() {
    let (flags, envs) = usage(
        "ExecStart=/usr/local/bin/switchyard-router --listen 0.0.0.0:7100\n---\n command: [\"switchyard-gateway\", \"--id=gw\"]\n SWITCHYARD_ETCD=x",
    );
    assert_eq!(
        flags["switchyard-router"],
        BTreeSet::from(["--listen".to_owned()])
    );
    assert_eq!(
        flags["switchyard-gateway"],
        BTreeSet::from(["--id".to_owned()])
    );
    assert_eq!(envs, BTreeSet::from(["SWITCHYARD_ETCD".to_owned()]));
}
