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

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
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
    let mut prev = "";
    for token in tokens.filter(|t| !t.is_empty()) {
        let after = std::mem::replace(&mut prev, token);
        // `cargo build -p switchyard-router --bin switchyardctl` (the demo's build) names
        // packages and targets, not command lines of our binaries: its flags are cargo's.
        if token == "cargo" {
            current = None;
            continue;
        }
        if matches!(after, "-p" | "--package" | "--bin") {
            continue;
        }
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
    files_under(&root.join("deploy"), &mut paths);
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
    let (flags, _) = usage(
        "cargo build --release -p switchyard-router --bin switchyardctl --bin switchyard-router\nswitchyardctl --router x",
    );
    assert_eq!(
        flags,
        BTreeMap::from([("switchyardctl", BTreeSet::from(["--router".to_owned()]))]),
        "a cargo command's flags belong to cargo"
    );
}

/// One command line a deploy file starts one of our binaries with, and the environment it
/// gives it.
#[derive(Debug)]
struct Launch {
    /// Where it was found, for the failure message.
    origin: String,
    bin: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn our_binary(token: &str) -> Option<&'static str> {
    let name = token.rsplit('/').next().unwrap_or(token);
    BINARIES.iter().copied().find(|b| *b == name)
}

/// `${VAR}` (systemd) and `$(VAR)` (Kubernetes) from `env`, as the service manager expands
/// them before the binary sees its arguments; a `${VAR}` the environment lacks becomes
/// empty, as systemd makes it (so a unit relying on an undocumented variable fails here).
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = arg.to_owned();
    for (k, v) in env {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("$({k})"), v);
    }
    // Bounded: each pass removes one `${…}`.
    while let Some(start) = out.find("${") {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        out.replace_range(start..=start + len, "");
    }
    out
}

/// systemd units: `ExecStart=` with `%i` set to an instance name, and the environment file
/// the unit's header documents (`#   SWITCHYARD_X=value` lines): the example an operator
/// copies must be enough for the unit to start.
fn systemd_launches(path: &Path, text: &str) -> Vec<Launch> {
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(str::trim)
        .filter(|l| l.starts_with("SWITCHYARD_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let bin = our_binary(words.next()?)?;
            let args = words
                .map(|w| expand(&w.replace("%i", "gw-sh-1"), &env))
                .collect();
            Some(Launch {
                origin: format!("{} ExecStart", path.display()),
                bin,
                args,
                env: env.clone(),
            })
        })
        .collect()
}

/// The items of a one-line YAML flow list, `["a", "b"]`.
fn flow_list(text: &str) -> Vec<String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Kubernetes containers: `command: ["bin"]`, the `args:` block list after it and the
/// container's `env:` (`value:`, or a stand-in for a `valueFrom:` the cluster fills in),
/// with `$(VAR)` expanded as the kubelet does. Written for the shapes under deploy/k8s:
/// the count check in the test fails when a manifest stops matching them.
fn k8s_launches(path: &Path, text: &str) -> Vec<Launch> {
    let stand_in = |field: &str| match field {
        "metadata.name" => "switchyard-gateway-0",
        "status.podIP" => "10.244.0.7",
        _ => "stand-in",
    };
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        let lines: Vec<&str> = doc.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(command) = line.trim().strip_prefix("command:") else {
                continue;
            };
            let Some(bin) = flow_list(command).first().and_then(|c| our_binary(c)) else {
                continue;
            };
            let mut args = Vec::new();
            let mut env = Vec::new();
            let mut section = "";
            let mut name = String::new();
            // The container's keys up to the next container or the end of the document.
            for l in &lines[i + 1..] {
                let t = l.trim();
                if t.starts_with("- name:") && !section.is_empty() && section != "env" {
                    break;
                }
                if let Some(key) = t.strip_suffix(':').filter(|k| !k.contains(' ')) {
                    section = if key == "args" || key == "env" {
                        key
                    } else {
                        "other"
                    };
                    continue;
                }
                match section {
                    "args" => match t.strip_prefix("- ") {
                        Some(a) => args.push(a.trim_matches('"').to_owned()),
                        None => section = "other",
                    },
                    "env" => {
                        if let Some(n) = t.strip_prefix("- name:") {
                            name = n.trim().to_owned();
                        } else if let Some(v) = t.strip_prefix("value:") {
                            env.push((name.clone(), v.trim().trim_matches('"').to_owned()));
                        } else if let Some(v) = t.strip_prefix("valueFrom:") {
                            let field = v.split("fieldPath:").nth(1).unwrap_or("");
                            let field = field.trim().trim_end_matches('}').trim();
                            env.push((name.clone(), stand_in(field).to_owned()));
                        } else {
                            section = "other";
                        }
                    }
                    _ => {}
                }
            }
            let args = args.iter().map(|a| expand(a, &env)).collect();
            out.push(Launch {
                origin: format!("{} container {bin}", path.display()),
                bin,
                args,
                env,
            });
        }
    }
    out
}

/// Compose services: `command: [...]` (it may wrap over lines) with the `SWITCHYARD_*`
/// environment of the `x-<router|gateway>` anchor the services of that binary extend.
fn compose_launches(path: &Path, text: &str) -> Vec<Launch> {
    let mut anchors: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut top = String::new();
    for line in text.lines() {
        if !line.starts_with([' ', '#']) && line.contains(':') {
            top = line.split(':').next().unwrap_or("").to_owned();
        }
        if let Some((k, v)) = line.trim().split_once(": ")
            && k.starts_with("SWITCHYARD_")
        {
            let v = v.trim().trim_matches('"').to_owned();
            anchors
                .entry(top.clone())
                .or_default()
                .push((k.to_owned(), v));
        }
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("command: [") {
        rest = &rest[i + "command: ".len()..];
        let end = rest.find(']').map_or(rest.len(), |e| e + 1);
        let items = flow_list(&rest[..end].replace('\n', " "));
        rest = &rest[end..];
        let Some(bin) = items.first().and_then(|c| our_binary(c)) else {
            continue;
        };
        let kind = bin.trim_start_matches("switchyard-");
        out.push(Launch {
            origin: format!("{} command {:?}", path.display(), items.get(2)),
            bin,
            args: items[1..].to_vec(),
            env: anchors
                .get(&format!("x-{kind}"))
                .cloned()
                .unwrap_or_default(),
        });
    }
    out
}

/// Runs `<bin> <args> --check` with only `env` of the `SWITCHYARD_*` variables.
fn check(bin: &str, args: &[String], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new(bin_path(bin));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SWITCHYARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).arg("--check").envs(env.iter().cloned());
    cmd.output().expect("run --check")
}

/// The ConfigMap's `router.toml`, the Secret's admin token, the app's JWKS and a ticket key,
/// written where the deploy files mount them (paths rewritten to a temporary directory):
/// the binaries check them too.
fn mounted_files(k8s: &Path, dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(k8s.join("configmap.yaml")).expect("configmap.yaml");
    let mut toml = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim() == "router.toml: |" {
            inside = true;
            continue;
        }
        if inside {
            match line.strip_prefix("    ") {
                Some(l) => toml.push_str(&format!("{l}\n")),
                None if line.trim().is_empty() => toml.push('\n'),
                None => break,
            }
        }
    }
    assert!(
        toml.contains("[[locality]]"),
        "found the ConfigMap's router.toml"
    );
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin-token:"))
        .expect("the Secret's admin-token")
        .trim();
    // The app's JWKS as the ConfigMap carries it (it must parse as shipped), and a ticket key
    // made here as an operator would (the Secret is never committed), with its public JWKS.
    let app_jwks = text
        .lines()
        .skip_while(|l| l.trim() != "app-jwks.json: |")
        .nth(1)
        .expect("the ConfigMap's app-jwks.json")
        .trim()
        .to_owned();
    let ticket_pem = switchyard_identity::generate_ed25519_pem();
    let signer = switchyard_identity::TicketSigner::from_pem(
        ticket_pem.as_bytes(),
        std::time::Duration::from_secs(60),
    )
    .expect("a fresh key loads");
    std::fs::write(dir.join("router.toml"), toml).expect("write router.toml");
    std::fs::write(dir.join("admin-token"), token).expect("write admin-token");
    std::fs::write(dir.join("app-jwks.json"), app_jwks).expect("write app-jwks.json");
    std::fs::write(dir.join("ticket-key.pem"), ticket_pem).expect("write ticket-key.pem");
    std::fs::write(dir.join("ticket-jwks.json"), signer.jwks().to_string())
        .expect("write ticket-jwks.json");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut files = vec![
        ("/etc/switchyard/router.toml".into(), path("router.toml")),
        (
            "/etc/switchyard-admin/admin-token".into(),
            path("admin-token"),
        ),
    ];
    // Where k8s, systemd and compose put the key files.
    for (mounted, name) in [
        ("/etc/switchyard-app/app-jwks.json", "app-jwks.json"),
        ("/etc/switchyard/app-jwks.json", "app-jwks.json"),
        ("/run/secrets/app-jwks", "app-jwks.json"),
        ("/etc/switchyard-ticket/ticket-key.pem", "ticket-key.pem"),
        ("/etc/switchyard/ticket-key.pem", "ticket-key.pem"),
        ("/run/secrets/ticket-key", "ticket-key.pem"),
        ("/etc/switchyard/ticket-jwks.json", "ticket-jwks.json"),
    ] {
        files.push((mounted.into(), path(name)));
    }
    files
}

#[test]
fn every_deploy_command_line_passes_its_binarys_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let deploy = root.join("deploy");
    let dir = tempfile::tempdir().expect("temp dir");
    let files = mounted_files(&deploy.join("k8s"), dir.path());
    let mut launches = Vec::new();
    let mut paths = Vec::new();
    files_under(&deploy, &mut paths);
    for path in &paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let in_dir = |d: &str| path.parent().is_some_and(|p| p.ends_with(d));
        if ext == "service" {
            launches.extend(systemd_launches(path, &text));
        } else if in_dir("k8s") {
            launches.extend(k8s_launches(path, &text));
        } else if in_dir("compose") {
            launches.extend(compose_launches(path, &text));
        }
    }
    // 3 systemd units, 2 Kubernetes workloads, 5 compose services: fewer means a parser
    // above stopped matching a file, and the check would pass by checking nothing.
    assert!(
        launches.len() >= 10,
        "found {} command lines: {launches:#?}",
        launches.len()
    );
    for bin in [
        "switchyard-router",
        "switchyard-gateway",
        "switchyard-agent",
    ] {
        assert!(
            launches.iter().any(|l| l.bin == bin),
            "no deploy file starts {bin}"
        );
    }
    let mut problems = Vec::new();
    for l in &launches {
        let swap = |s: &str| {
            files
                .iter()
                .fold(s.to_owned(), |s, (from, to)| s.replace(from, to))
        };
        let args: Vec<String> = l.args.iter().map(|a| swap(a)).collect();
        let env: Vec<(String, String)> = l.env.iter().map(|(k, v)| (k.clone(), swap(v))).collect();
        let out = check(l.bin, &args, &env);
        if !out.status.success() {
            problems.push(format!(
                "{}: {} {} --check: {}{}",
                l.origin,
                l.bin,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "deploy command lines the binaries refuse:\n{}",
        problems.join("\n")
    );
}

#[test]
fn check_binds_nothing_contacts_no_etcd_and_refuses_what_would_not_start() {
    // A port held here and an etcd nobody serves: --check must still pass, proving it
    // neither binds nor connects.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let no_etcd = vec![(
        "SWITCHYARD_ETCD".to_owned(),
        format!("http://127.0.0.1:{}", switchyard_tests::free_port()),
    )];
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let ok = [
        (
            "switchyard-router",
            s(&["--listen", &addr, "--http-listen", &addr]),
        ),
        (
            "switchyard-gateway",
            s(&["--id", "gw-1", "--listen", &addr, "--http-listen", &addr]),
        ),
        (
            "switchyard-agent",
            s(&[
                "--id",
                "gw-1",
                "--capacity",
                "10",
                "--tcp-addr",
                "10.0.0.1:7200",
            ]),
        ),
    ];
    for (bin, args) in &ok {
        let started = std::time::Instant::now();
        let out = check(bin, args, &no_etcd);
        assert!(
            out.status.success(),
            "{bin} --check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
        // Connecting to the missing etcd would take its connect timeout (seconds).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{bin} was slow"
        );
    }
    // What the systemd gateway unit did before it passed --advertise: refused, exit 2.
    let out = check(
        "switchyard-gateway",
        &s(&["--id", "gw-1", "--listen", "0.0.0.0:7200"]),
        &no_etcd,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"));
    // A config file that names a missing token file: exit 2 with the path.
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = dir.path().join("router.toml");
    std::fs::write(&toml, "admin_token_file = \"/nonexistent/token\"\n").expect("write");
    let out = check(
        "switchyard-router",
        &s(&["--config", &toml.to_string_lossy()]),
        &no_etcd,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/token"));
    // A TLS certificate that is no certificate: exit 2.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").expect("write");
    let junk = junk.to_string_lossy().into_owned();
    let out = check(
        "switchyard-router",
        &s(&["--tls-cert", &junk, "--tls-key", &junk]),
        &no_etcd,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
