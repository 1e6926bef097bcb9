//! Admission of accepted sockets, before any byte is read: a cap on open connections, on
//! connections that have not completed HELLO, and per source address a cap on connections
//! and a token-bucket accept rate. A refused socket is dropped at once (no TLS, no frame)
//! and counted in `switchyard_gateway_refused_connections_total{reason}`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::Config;

/// Why a socket was refused; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` open already.
    MaxConnections,
    /// `max_handshaking` connections have not completed HELLO yet.
    MaxHandshaking,
    /// Its address holds `max_connections_per_ip` already.
    MaxConnectionsPerIp,
    /// Its address used up its accept-rate tokens.
    AcceptRatePerIp,
}

impl Refused {
    /// Metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxHandshaking => "max_handshaking",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::AcceptRatePerIp => "accept_rate_per_ip",
        }
    }
}

/// One source address's state.
#[derive(Debug)]
struct PerIp {
    /// Its open connections.
    open: u32,
    /// Accept tokens left, refilled at the per-address rate up to the burst.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// What every accept shares.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Cap on open connections.
    max_connections: usize,
    /// Cap on connections before HELLO.
    max_handshaking: usize,
    /// Cap per address; 0 = off.
    max_per_ip: u32,
    /// Accepts per second per address; 0 = off.
    rate_per_ip: f64,
    /// Bucket size: one second's worth, at least one.
    burst: f64,
    /// Open connections.
    open: AtomicUsize,
    /// Connections that have not completed HELLO.
    handshaking: AtomicUsize,
    /// State by address (IPv6 by /64: one host is given a whole /64).
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    /// Last sweep of addresses with nothing open and a full bucket.
    swept: Mutex<Instant>,
}

/// Held by a connection's task for its life; releases its counts when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    /// The limits it counts in.
    limits: Arc<Limits>,
    /// The address key, when per-address limits are on.
    ip: Option<IpAddr>,
    /// Still counted as handshaking.
    handshaking: bool,
}

impl Permit {
    /// HELLO arrived: the connection no longer holds a handshake slot.
    pub(crate) fn hello_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.limits.handshaking.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("switchyard_gateway_handshaking").decrement(1.0);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.hello_done();
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip
            && let Some(e) = self.limits.per_ip.lock().get_mut(&ip)
        {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// Releases one count of `n` unless kept.
struct Undo<'a>(&'a AtomicUsize, bool);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Limits {
    pub(crate) fn new(c: &Config) -> Self {
        Self {
            max_connections: c.max_connections,
            max_handshaking: c.max_handshaking,
            max_per_ip: c.max_connections_per_ip,
            rate_per_ip: c.accept_rate_per_ip,
            burst: c.accept_rate_per_ip.max(1.0),
            open: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Admits a socket from `ip` or says why not (and counts the refusal).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let r = self.try_admit(ip, Instant::now());
        if let Err(why) = r {
            metrics::counter!("switchyard_gateway_refused_connections_total", "reason" => why.reason())
                .increment(1);
        }
        r
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refused> {
        let mut open = Undo(&self.open, false);
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            return Err(Refused::MaxConnections);
        }
        let mut hs = Undo(&self.handshaking, false);
        if self.handshaking.fetch_add(1, Ordering::Relaxed) >= self.max_handshaking {
            return Err(Refused::MaxHandshaking);
        }
        let per_ip = self.max_per_ip > 0 || self.rate_per_ip > 0.0;
        let ip = per_ip.then(|| key(ip));
        if let Some(ip) = ip {
            self.sweep(now);
            let mut map = self.per_ip.lock();
            let e = map.entry(ip).or_insert(PerIp {
                open: 0,
                tokens: self.burst,
                at: now,
            });
            if self.max_per_ip > 0 && e.open >= self.max_per_ip {
                return Err(Refused::MaxConnectionsPerIp);
            }
            if self.rate_per_ip > 0.0 {
                let refill = now.saturating_duration_since(e.at).as_secs_f64() * self.rate_per_ip;
                e.tokens = (e.tokens + refill).min(self.burst);
                e.at = now;
                if e.tokens < 1.0 {
                    return Err(Refused::AcceptRatePerIp);
                }
                e.tokens -= 1.0;
            }
            e.open += 1;
        }
        (open.1, hs.1) = (true, true);
        metrics::gauge!("switchyard_gateway_handshaking").increment(1.0);
        Ok(Permit {
            limits: self.clone(),
            ip,
            handshaking: true,
        })
    }

    /// At most once a second, forgets addresses with nothing open and a full bucket (they
    /// would start afresh anyway), so the map holds only live and recently busy addresses.
    fn sweep(&self, now: Instant) {
        {
            let mut last = self.swept.lock();
            if now.saturating_duration_since(*last) < Duration::from_secs(1) {
                return;
            }
            *last = now;
        }
        let (rate, burst) = (self.rate_per_ip, self.burst);
        self.per_ip.lock().retain(|_, e| {
            let full = rate <= 0.0
                || e.tokens + now.saturating_duration_since(e.at).as_secs_f64() * rate >= burst;
            e.open > 0 || !full
        });
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_ip.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Config)) -> Arc<Limits> {
        let mut c = Config::new("gw-1");
        f(&mut c);
        c.validate().unwrap();
        Arc::new(Limits::new(&c))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn caps_count_open_connections_and_release_on_drop() {
        let l = limits(|c| {
            c.max_connections = 2;
            c.max_connections_per_ip = 0;
            c.accept_rate_per_ip = 0.0;
        });
        let p1 = l.admit(A).unwrap();
        let _p2 = l.admit(B).unwrap();
        assert_eq!(l.admit(A).unwrap_err(), Refused::MaxConnections);
        drop(p1);
        l.admit(A).unwrap();
        assert_eq!(
            l.addresses(),
            0,
            "no per-address state when those limits are off"
        );
    }

    #[test]
    fn handshake_slots_free_at_hello() {
        let l = limits(|c| c.max_handshaking = 1);
        let mut p = l.admit(A).unwrap();
        assert_eq!(l.admit(B).unwrap_err(), Refused::MaxHandshaking);
        p.hello_done();
        let _q = l.admit(B).unwrap();
        assert_eq!(l.open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn per_address_count_and_rate() {
        let l = limits(|c| {
            c.max_connections_per_ip = 2;
            c.accept_rate_per_ip = 3.0;
        });
        let t = Instant::now();
        let p1 = l.try_admit(A, t).unwrap();
        let _p2 = l.try_admit(A, t).unwrap();
        assert_eq!(l.try_admit(A, t).unwrap_err(), Refused::MaxConnectionsPerIp);
        let _b = l.try_admit(B, t).unwrap();
        drop(p1);
        let _p3 = l.try_admit(A, t).unwrap();
        drop(_p3);
        // Three tokens spent: the fourth accept waits for a refill.
        assert_eq!(l.try_admit(A, t).unwrap_err(), Refused::AcceptRatePerIp);
        let _p4 = l.try_admit(A, t + Duration::from_millis(400)).unwrap();
        assert_eq!(l.open.load(Ordering::Relaxed), 3, "refusals hold nothing");
        assert_eq!(l.handshaking.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn idle_addresses_are_forgotten_once_their_bucket_is_full() {
        let l = limits(|c| c.accept_rate_per_ip = 10.0);
        let t = Instant::now() + Duration::from_secs(2);
        drop(l.try_admit(A, t).unwrap());
        let _b = l.try_admit(B, t).unwrap();
        assert_eq!(l.addresses(), 2);
        l.sweep(t + Duration::from_secs(2));
        assert_eq!(l.addresses(), 1, "B is open, A is idle with a full bucket");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(key(a), key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(m), A);
    }
}
