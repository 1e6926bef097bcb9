//! A scripted gateway peer for client-lib contract tests: it speaks contract 3 on a loopback
//! port, answers HELLO as told (WELCOME, REJECT, KICK or nothing; or a queue of one-off
//! answers first), pushes DATA on demand, and records every HELLO and every frame the
//! client sends, so a test can check on the wire what the
//! client acknowledged and when it pinged. The reference gateway cannot be made to hold an
//! ACK or refuse with `retry_after`; this peer can.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use switchyard_client::Gateway;
use switchyard_proto::v1;
use switchyard_proto::wire::{DEFAULT_MAX_FRAME, Frame, FrameCodec};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// How the peer answers a HELLO.
#[derive(Debug, Clone)]
pub enum Answer {
    /// WELCOME with these heartbeat hints (0 = not said).
    Welcome {
        /// `heartbeat_interval_ms`.
        heartbeat_interval_ms: u64,
        /// `idle_timeout_ms`.
        idle_timeout_ms: u64,
    },
    /// REJECT with this code and `retry_after_ms`.
    Reject(v1::RejectCode, u64),
    /// Nothing at all: the connection stays open and silent.
    Silent,
}

/// What the test tells the live sessions to do.
#[derive(Debug, Clone)]
enum Order {
    /// Push one DATA frame (numbered per session from 1).
    Push(Bytes),
    /// Send KICK and close.
    Kick,
    /// Drop every connection (a crash).
    Drop,
}

/// Everything the peer saw.
#[derive(Debug, Default)]
struct Seen {
    /// Each HELLO, with its arrival time.
    hellos: Vec<(Instant, v1::Hello)>,
    /// Every frame from a client after its HELLO, with its arrival time.
    frames: Vec<(Instant, Frame)>,
}

/// A running scripted peer (its task stops when this is dropped).
#[derive(Debug)]
pub struct ScriptedGateway {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// What to answer to HELLO (changeable while running).
    answer: Arc<Mutex<Answer>>,
    /// One-off answers to the next HELLOs, before `answer` applies again.
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// Whether client DATA frames are acknowledged.
    ack: Arc<Mutex<bool>>,
    /// To the sessions.
    orders: broadcast::Sender<Order>,
    /// Shared record.
    seen: Arc<Mutex<Seen>>,
    /// Accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedGateway {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.orders.send(Order::Drop);
    }
}

impl ScriptedGateway {
    /// Listens on a free loopback port.
    pub async fn start(answer: Answer, ack: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let answer = Arc::new(Mutex::new(answer));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let ack = Arc::new(Mutex::new(ack));
        let (orders, _) = broadcast::channel(4096);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn({
            let (answer, script, ack, orders, seen) = (
                answer.clone(),
                script.clone(),
                ack.clone(),
                orders.clone(),
                seen.clone(),
            );
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(session(
                        Framed::new(tcp, FrameCodec::new(DEFAULT_MAX_FRAME)),
                        script.clone(),
                        answer.clone(),
                        ack.clone(),
                        orders.subscribe(),
                        seen.clone(),
                    ));
                }
            }
        });
        Self {
            addr,
            answer,
            script,
            ack,
            orders,
            seen,
            task,
        }
    }

    /// A bootstrap entry for this peer.
    pub fn gateway(&self, id: &str) -> Gateway {
        Gateway::new(id, &self.addr)
    }

    /// Changes the answer to later HELLOs.
    pub fn answer(&self, a: Answer) {
        *self.answer.lock().expect("peer lock") = a;
    }

    /// Answers the next HELLOs with these, in order, then with the standing answer again
    /// (e.g. one REJECT AUTH_EXPIRED, then WELCOME).
    pub fn then_answer(&self, first: impl IntoIterator<Item = Answer>) {
        self.script.lock().expect("peer lock").extend(first);
    }

    /// Turns acknowledging client DATA on or off.
    pub fn set_ack(&self, on: bool) {
        *self.ack.lock().expect("peer lock") = on;
    }

    /// Pushes one DATA frame to every live session.
    pub fn push(&self, payload: impl Into<Bytes>) {
        let _ = self.orders.send(Order::Push(payload.into()));
    }

    /// Kicks every live session.
    pub fn kick(&self) {
        let _ = self.orders.send(Order::Kick);
    }

    /// Drops every live connection.
    pub fn drop_all(&self) {
        let _ = self.orders.send(Order::Drop);
    }

    /// When each HELLO arrived.
    pub fn hellos(&self) -> Vec<Instant> {
        let seen = self.seen.lock().expect("peer lock");
        seen.hellos.iter().map(|(t, _)| *t).collect()
    }

    /// The token of each HELLO, in arrival order.
    pub fn hello_tokens(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("peer lock");
        seen.hellos.iter().map(|(_, h)| h.token.clone()).collect()
    }

    /// The highest ACK any client sent (0: none).
    pub fn max_ack(&self) -> u64 {
        self.seen
            .lock()
            .expect("peer lock")
            .frames
            .iter()
            .filter_map(|(_, f)| match f {
                Frame::Ack(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// How many PINGs clients sent after `since`.
    pub fn pings_since(&self, since: Instant) -> usize {
        self.seen
            .lock()
            .expect("peer lock")
            .frames
            .iter()
            .filter(|(t, f)| *t >= since && matches!(f, Frame::Ping(_)))
            .count()
    }

    /// Payloads of client DATA frames, in arrival order.
    pub fn data(&self) -> Vec<Bytes> {
        self.seen
            .lock()
            .expect("peer lock")
            .frames
            .iter()
            .filter_map(|(_, f)| match f {
                Frame::Data { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn session(
    mut link: Framed<tokio::net::TcpStream, FrameCodec>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    standing: Arc<Mutex<Answer>>,
    ack: Arc<Mutex<bool>>,
    mut orders: broadcast::Receiver<Order>,
    seen: Arc<Mutex<Seen>>,
) {
    // Bounded: a test peer never outlives a test by much.
    let limit = Instant::now() + Duration::from_secs(120);
    match tokio::time::timeout_at(limit, link.next()).await {
        Ok(Some(Ok(Frame::Hello(h)))) => seen
            .lock()
            .expect("peer lock")
            .hellos
            .push((Instant::now(), h)),
        _ => return,
    }
    // Chosen when the HELLO arrives, so a script applies to HELLOs in arrival order.
    let answer = script
        .lock()
        .expect("peer lock")
        .pop_front()
        .unwrap_or_else(|| standing.lock().expect("peer lock").clone());
    let reply = match answer {
        Answer::Welcome {
            heartbeat_interval_ms,
            idle_timeout_ms,
        } => Frame::Welcome(v1::Welcome {
            gateway_id: "scripted".into(),
            session_id: "s1".into(),
            heartbeat_interval_ms,
            idle_timeout_ms,
        }),
        Answer::Reject(code, retry_after_ms) => {
            let _ = link
                .send(Frame::Reject(v1::Reject {
                    code: code as i32,
                    reason: "scripted".into(),
                    retry_after_ms,
                }))
                .await;
            return;
        }
        Answer::Silent => {
            let _ = tokio::time::timeout_at(limit, orders.recv()).await;
            return;
        }
    };
    if link.send(reply).await.is_err() {
        return;
    }
    let mut out_seq = 0u64;
    loop {
        tokio::select! {
            f = link.next() => match f {
                Some(Ok(frame)) => {
                    seen.lock().expect("peer lock").frames.push((Instant::now(), frame.clone()));
                    let answer = match frame {
                        Frame::Ping(p) => Some(Frame::Pong(p)),
                        Frame::Data { seq, .. } if seq != 0 && *ack.lock().expect("peer lock") => Some(Frame::Ack(seq)),
                        _ => None,
                    };
                    if let Some(a) = answer
                        && link.send(a).await.is_err()
                    {
                        return;
                    }
                }
                _ => return,
            },
            o = orders.recv() => match o {
                Ok(Order::Push(payload)) => {
                    out_seq += 1;
                    // Queue without flushing: a client that stops reading must not stall
                    // this peer's bookkeeping (the kernel buffers absorb it).
                    if link.feed(Frame::Data { seq: out_seq, payload }).await.is_err() {
                        return;
                    }
                    let _ = tokio::time::timeout(
                        Duration::from_millis(50),
                        SinkExt::<Frame>::flush(&mut link),
                    )
                    .await;
                }
                Ok(Order::Kick) => {
                    let _ = link
                        .send(Frame::Kick(v1::Kick {
                            code: v1::KickCode::Admin as i32,
                            reason: "scripted".into(),
                        }))
                        .await;
                    return;
                }
                Ok(Order::Drop) | Err(_) => return,
            },
            () = tokio::time::sleep_until(limit) => return,
        }
    }
}
