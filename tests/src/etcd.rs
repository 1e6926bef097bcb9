//! A real etcd on free loopback ports with a temporary data dir.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use etcd_client::Client;
use tempfile::TempDir;

use crate::eventually;
use crate::ports;
use crate::process::{Child, NotReady, START_ATTEMPTS};

/// How long a member may take to answer once started: a loaded 2-core machine and a
/// member waiting for its peers both fit.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// The etcd binary: `ETCD_BIN`, else `etcd` on `PATH`. Panics (never skips) when missing.
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "etcd not found: set ETCD_BIN or put etcd on PATH (apt-get install etcd-server; .ci/run does it)"
    );
}

/// One etcd member's fixed identity: ports and data survive restarts.
#[derive(Debug)]
struct Member {
    /// `--name`, unique in the cluster, and how messages name it.
    name: String,
    /// Clients' port; fixed for the member's life, so long-lived processes find it again
    /// after a restart (the allocator never hands it to anything else meanwhile).
    client_port: u16,
    /// Peers' port; in every member's `--initial-cluster`, so fixed as well.
    peer_port: u16,
    /// Its data dir: a restarted member rejoins with its data.
    data: TempDir,
    /// The process while it runs.
    child: Option<Child>,
    /// Further `etcd` flags (e.g. a tiny `--quota-backend-bytes`).
    args: Vec<String>,
}

impl Member {
    fn new(i: usize, args: &[String]) -> Self {
        let [client_port, peer_port] = ports::reserve_n();
        Self {
            name: format!("m{i}"),
            client_port,
            peer_port,
            data: private_tempdir(),
            child: None,
            args: args.to_vec(),
        }
    }

    /// etcd's data dir: a fresh directory inside `data` (`etcdctl snapshot restore` wants
    /// to create its target itself).
    fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) {
        let mut cmd = Command::new(etcd_bin());
        // etcd reads ETCD_* variables; the test's environment must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg("switchyard-test")
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(&self.args);
        self.child = Some(Child::spawn(cmd, &format!("etcd {}", self.name)));
    }

    /// Waits until the running member answers, or says why it did not (it exited, with its
    /// output, or it is still not answering).
    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let endpoint = self.endpoint();
        let child = self.child.as_mut().expect("the member was started");
        child
            .wait_ready(READY_LIMIT, &format!("etcd at {endpoint}"), || {
                let endpoint = endpoint.clone();
                async move {
                    let mut c = Client::connect([endpoint], None).await.ok()?;
                    c.get("/", None).await.ok()
                }
            })
            .await
            .map(|_| ())
    }

    /// [`Member::wait_ready`], panicking with the member's output when it fails.
    async fn ready(&mut self) {
        if let Err(e) = self.wait_ready().await {
            panic!("{e}");
        }
    }

    fn ports(&self) -> [u16; 2] {
        [self.client_port, self.peer_port]
    }
}

/// A single-member etcd for one test. Killed and its data removed on drop.
#[derive(Debug)]
pub struct Etcd {
    member: Member,
}

impl Etcd {
    /// Starts etcd and waits until it answers (on new ports when one was taken).
    pub async fn start() -> Self {
        let members = start_members(1, &[]).await;
        Self {
            member: members.into_iter().next().expect("one member"),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// A client for this etcd with the registry's connection options.
    pub async fn client(&self) -> Client {
        connect(&[self.endpoint()]).await
    }

    /// Stops etcd gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.member.child.take() {
            child.terminate(Duration::from_secs(10));
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.member.child.is_none(), "etcd is still running");
        let cluster = format!("{}={}", self.member.name, self.member.peer_url());
        self.member.spawn(&cluster, "existing");
        self.member.ready().await;
    }
}

/// A 3-member (or n-member) etcd cluster on loopback. Members keep their ports and data
/// across [`EtcdCluster::kill`] and [`EtcdCluster::restart`].
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--initial-cluster` (every member's name and peer URL), for restarts.
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until each answers (all on new ports when one member
    /// found a port taken).
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, &[] as &[&str]).await
    }

    /// Like [`EtcdCluster::start`], with further flags for every member (e.g.
    /// `--quota-backend-bytes`).
    pub async fn start_with<S: AsRef<str>>(n: usize, args: &[S]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let members = start_members(n, &args).await;
        let initial_cluster = initial_cluster(&members);
        Self {
            members,
            initial_cluster,
        }
    }

    /// Client URLs of every member, running or not: what a long-lived process is given, so
    /// it can use a member again once it is back.
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// [`EtcdCluster::all_endpoints`] comma-separated, as `--etcd` flags take them (one
    /// member: its URL).
    pub fn endpoint(&self) -> String {
        self.all_endpoints().join(",")
    }

    /// Client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect()
    }

    /// A client over every running member.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints()).await
    }

    /// Index of the current leader (asks each running member).
    pub async fn leader(&self) -> usize {
        eventually(Duration::from_secs(10), "an etcd leader", || async {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok(mut c) = Client::connect([m.endpoint()], None).await else {
                    continue;
                };
                if let Ok(status) = c.status().await {
                    let me = status.header().map(|h| h.member_id());
                    if me.is_some() && me == Some(status.leader()) {
                        return Some(i);
                    }
                }
            }
            None
        })
        .await
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// `etcdctl snapshot save` from a running member into `path` (what an operator's backup
    /// job runs). Panics with etcdctl's output when it fails.
    pub async fn save_snapshot(&self, path: &std::path::Path) {
        let endpoint = self
            .endpoints()
            .into_iter()
            .next()
            .expect("a running member");
        etcdctl(&[
            "--endpoints",
            &endpoint,
            "snapshot",
            "save",
            &path.to_string_lossy(),
        ])
        .await;
    }

    /// Replaces the cluster with a new one restored from `snapshot`, as the etcd disaster
    /// recovery guide does it: every member stops, `etcdctl snapshot restore` writes each a
    /// fresh data dir (a new cluster id; the membership from these members' names and peer
    /// URLs), and the members start on their old ports, so long-lived clients reconnect to
    /// the same addresses. Writes made after the snapshot are gone.
    pub async fn restore(&mut self, snapshot: &std::path::Path) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                child.terminate(Duration::from_secs(10));
            }
        }
        for m in &mut self.members {
            m.data = private_tempdir();
            etcdctl(&[
                "snapshot",
                "restore",
                &snapshot.to_string_lossy(),
                "--name",
                &m.name,
                "--data-dir",
                &m.data_dir().to_string_lossy(),
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-advertise-peer-urls",
                &m.peer_url(),
                "--initial-cluster-token",
                "switchyard-restored",
            ])
            .await;
        }
        for m in &mut self.members {
            m.spawn(&self.initial_cluster, "new");
        }
        for m in &mut self.members {
            m.ready().await;
        }
    }

    /// Starts member `i` again on its ports and data (it rejoins as an existing member) and
    /// waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "etcd {} is still running", m.name);
        m.spawn(&self.initial_cluster, "existing");
        m.ready().await;
    }
}

/// `--initial-cluster`: every member's name and peer URL.
fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts a new `n`-member cluster and waits until every member answers. A member that
/// exits on a taken port takes the whole cluster down with it (the ports are in every
/// member's `--initial-cluster`): it is started again with new ports and data, up to
/// [`START_ATTEMPTS`] times. Any other failure panics with the member's output.
async fn start_members(n: usize, args: &[String]) -> Vec<Member> {
    let mut conflicts = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let mut members: Vec<Member> = (0..n).map(|i| Member::new(i, args)).collect();
        let cluster = initial_cluster(&members);
        for m in &mut members {
            m.spawn(&cluster, "new");
        }
        let mut failure = None;
        for m in &mut members {
            if let Err(e) = m.wait_ready().await {
                failure = Some((e, m.ports()));
                break;
            }
        }
        match failure {
            None => return members,
            Some((e, ports)) if e.port_conflict(&ports) => {
                eprintln!("{e}\n(a port was taken: starting etcd again on new ports)");
                conflicts.push(e.to_string());
            }
            Some((e, _)) => panic!("{e}"),
        }
    }
    panic!(
        "etcd did not start in {START_ATTEMPTS} attempts, each ending on a port conflict:\n{}",
        conflicts.join("\n")
    );
}

/// How long one etcdctl command may take on a loaded machine.
const ETCDCTL_LIMIT: Duration = Duration::from_secs(60);

/// Runs `etcdctl` (API v3; Debian's etcd-client, which .ci/run installs) and panics with its
/// output unless it succeeds in time.
async fn etcdctl(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("etcdctl");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3").args(args).kill_on_drop(true);
    let out = tokio::time::timeout(ETCDCTL_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} took over {ETCDCTL_LIMIT:?}"))
        .unwrap_or_else(|e| {
            panic!("etcdctl {args:?}: {e} (apt-get install etcd-client; .ci/run does it)")
        });
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary data dir only we can read, as etcd wants (it warns otherwise).
fn private_tempdir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("switchyard-etcd-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod data dir");
    dir
}

async fn connect(endpoints: &[String]) -> Client {
    switchyard_registry::EtcdConfig::new(endpoints)
        .expect("endpoints")
        .connect()
        .await
        .expect("connect")
}
