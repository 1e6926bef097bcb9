//! Many client-lib clients in one process, each with its connection history, so a driver
//! can ask "who was on gateway X, and how long until each of them was connected elsewhere".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use switchyard_client::{Client, Event};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How to build the swarm.
#[derive(Debug, Clone)]
pub struct Config {
    /// Router gRPC URLs every client may ask.
    pub routers: Vec<String>,
    /// Number of clients.
    pub clients: usize,
    /// Client ids are `<id_prefix>-<n>`.
    pub id_prefix: String,
    /// (region, zone) hints, assigned round-robin over clients.
    pub localities: Vec<(String, String)>,
    /// Logins in flight at once, so the swarm itself is not a thundering herd.
    pub login_concurrency: usize,
    /// Give up waiting for the whole swarm to log in after this long.
    pub login_timeout: Duration,
}

/// What one client went through.
#[derive(Debug, Default)]
struct History {
    /// Gateway it is on now.
    gateway: Option<String>,
    /// Gateway it was on before the current link, if it moved.
    previous: Option<String>,
    /// When it last lost a link.
    lost_at: Option<Instant>,
    /// Why it last lost a link (`heartbeat timeout`, `closed by gateway`, ...), so a driver
    /// can tell a heartbeat detection from a reset.
    lost_reason: Option<String>,
    /// When it last got a link.
    connected_at: Option<Instant>,
    /// Links gained after the first one.
    reconnects: u32,
    /// Terminal event (kicked, gave up), if any.
    ended: Option<String>,
}

/// One client of the swarm.
#[derive(Debug)]
struct Member {
    client: Client,
    history: Mutex<History>,
    /// Messages (DATA payloads) received from gateways.
    received: AtomicU64,
}

/// A client's move from one gateway to another.
#[derive(Debug, Clone)]
pub struct Move {
    /// Client id.
    pub client: String,
    /// Gateway it left.
    pub from: String,
    /// Gateway it is on now.
    pub to: String,
    /// When the new link came up.
    pub at: Instant,
}

/// A client's last lost link and what followed it.
#[derive(Debug, Clone)]
pub struct Loss {
    /// Client id.
    pub client: String,
    /// Gateway the lost link was to.
    pub from: Option<String>,
    /// When the client reported the link lost (its `Disconnected` event).
    pub lost_at: Instant,
    /// The `Disconnected` reason.
    pub reason: String,
    /// Gateway it is on now, if connected again.
    pub to: Option<String>,
    /// When the current link came up, if it came up after the loss.
    pub reconnected_at: Option<Instant>,
}

/// The running swarm. Dropping it closes every client.
#[derive(Debug)]
pub struct Swarm {
    members: Vec<(String, Arc<Member>)>,
    tasks: JoinSet<()>,
}

impl Swarm {
    /// Builds every client, logs them in (bounded concurrency) and waits until all are
    /// connected or `login_timeout` passes. `customize` adjusts each client's builder (it is
    /// given the client id, e.g. to set that client's app token).
    pub async fn start(
        config: &Config,
        customize: impl Fn(&str, switchyard_client::Builder) -> switchyard_client::Builder,
    ) -> anyhow::Result<Self> {
        let mut members = Vec::with_capacity(config.clients);
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Semaphore::new(config.login_concurrency.max(1)));
        for n in 0..config.clients {
            let id = format!("{}-{n}", config.id_prefix);
            let mut builder = Client::builder()
                .routers(config.routers.clone())
                .client_id(id.clone());
            if !config.localities.is_empty() {
                let (region, zone) = &config.localities[n % config.localities.len()];
                builder = builder.region(region.clone()).zone(zone.clone());
            }
            let client = customize(&id, builder).build()?;
            let member = Arc::new(Member {
                client,
                history: Mutex::new(History::default()),
                received: AtomicU64::new(0),
            });
            let m = member.clone();
            let gate = gate.clone();
            tasks.spawn(async move {
                let mut events = m.client.events();
                let messages = {
                    let _permit = gate.acquire().await;
                    m.client.connect().await
                };
                let Ok(mut messages) = messages else {
                    // connect() ends only on a terminal error; the event says which.
                    while let Some(e) = events.next().await {
                        record(&m, e);
                    }
                    return;
                };
                loop {
                    tokio::select! {
                        e = events.next() => match e {
                            Some(e) => record(&m, e),
                            None => break,
                        },
                        // Drained so a slow reader never stalls the link.
                        msg = messages.next() => match msg {
                            Some(_) => { m.received.fetch_add(1, Ordering::Relaxed); }
                            None => break,
                        },
                    }
                }
            });
            members.push((id, member));
        }
        let swarm = Self { members, tasks };
        let deadline = Instant::now() + config.login_timeout;
        while swarm.connected() < config.clients {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "only {} of {} clients logged in within {:?}",
                    swarm.connected(),
                    config.clients,
                    config.login_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(swarm)
    }

    /// Clients with a live link.
    pub fn connected(&self) -> usize {
        self.members
            .iter()
            .filter(|(_, m)| m.history.lock().gateway.is_some())
            .count()
    }

    /// Clients per gateway right now.
    pub fn distribution(&self) -> BTreeMap<String, usize> {
        let mut d = BTreeMap::new();
        for (_, m) in &self.members {
            if let Some(g) = &m.history.lock().gateway {
                *d.entry(g.clone()).or_insert(0) += 1;
            }
        }
        d
    }

    /// Ids of the clients on `gateway` right now.
    pub fn on_gateway(&self, gateway: &str) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.history.lock().gateway.as_deref() == Some(gateway))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// For each of `clients`, its move away from `from` if it has one (connected elsewhere
    /// after leaving `from`).
    pub fn moves_from(&self, from: &str, clients: &[String]) -> Vec<Move> {
        let wanted: std::collections::HashSet<&str> = clients.iter().map(String::as_str).collect();
        self.members
            .iter()
            .filter(|(id, _)| wanted.contains(id.as_str()))
            .filter_map(|(id, m)| {
                let h = m.history.lock();
                let to = h.gateway.clone()?;
                let at = h.connected_at?;
                (to != from && h.previous.as_deref() == Some(from)).then(|| Move {
                    client: id.clone(),
                    from: from.to_owned(),
                    to,
                    at,
                })
            })
            .collect()
    }

    /// For each of `clients` that lost a link at or after `since`: its last loss and, if it
    /// is connected again, where and when.
    pub fn losses_since(&self, clients: &[String], since: Instant) -> Vec<Loss> {
        let wanted: std::collections::HashSet<&str> = clients.iter().map(String::as_str).collect();
        self.members
            .iter()
            .filter(|(id, _)| wanted.contains(id.as_str()))
            .filter_map(|(id, m)| {
                let h = m.history.lock();
                let lost_at = h.lost_at.filter(|t| *t >= since)?;
                let reconnected_at = h.connected_at.filter(|t| *t >= lost_at);
                Some(Loss {
                    client: id.clone(),
                    from: h.previous.clone(),
                    lost_at,
                    reason: h.lost_reason.clone().unwrap_or_default(),
                    to: reconnected_at.and(h.gateway.clone()),
                    reconnected_at,
                })
            })
            .collect()
    }

    /// Clients that ended for good (kicked or gave up), with the reason.
    pub fn ended(&self) -> Vec<(String, String)> {
        self.members
            .iter()
            .filter_map(|(id, m)| m.history.lock().ended.clone().map(|r| (id.clone(), r)))
            .collect()
    }

    /// Links regained after a loss, over all clients.
    pub fn reconnects(&self) -> u64 {
        self.members
            .iter()
            .map(|(_, m)| u64::from(m.history.lock().reconnects))
            .sum()
    }

    /// Messages received from gateways, over all clients (the reference gateway echoes
    /// what it is sent).
    pub fn received(&self) -> u64 {
        self.members
            .iter()
            .map(|(_, m)| m.received.load(Ordering::Relaxed))
            .sum()
    }

    /// The client handles (for sending or network changes).
    pub fn clients(&self) -> impl Iterator<Item = (&str, &Client)> {
        self.members.iter().map(|(id, m)| (id.as_str(), &m.client))
    }

    /// Closes every client and waits for their tasks.
    pub async fn close(mut self) {
        for (_, m) in &self.members {
            let _ = m.client.close().await;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                () = &mut deadline => { self.tasks.abort_all(); break; }
            }
        }
    }
}

fn record(m: &Member, e: Event) {
    let mut h = m.history.lock();
    match e {
        Event::Connected { gateway, .. } => {
            if h.lost_at.is_some() {
                h.reconnects += 1;
            }
            h.gateway = Some(gateway);
            h.connected_at = Some(Instant::now());
        }
        Event::Disconnected { cause, .. } => {
            h.previous = h.gateway.take();
            h.lost_at = Some(Instant::now());
            h.lost_reason = Some(cause.to_string());
        }
        Event::Kicked { reason, .. } => {
            h.previous = h.gateway.take();
            h.ended = Some(format!("kicked: {reason}"));
        }
        Event::GaveUp { cause } => {
            h.previous = h.gateway.take();
            h.ended = Some(format!("gave up: {cause}"));
        }
        _ => {}
    }
}
