//! `GatewayRecord` and `DrainRecord`: the JSON values under `P/gateways/<id>` and
//! `P/drain/<id>`. Unknown fields are ignored so agents in other languages and newer
//! versions can add fields.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, validate_id};

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("not a valid record: {0}")]
    Json(String),
    /// The id breaks the key schema.
    #[error(transparent)]
    Id(#[from] KeyError),
    /// The record's id differs from the id in its key.
    #[error("record id {record:?} does not match key id {key:?}")]
    IdMismatch {
        /// The id in the key.
        key: String,
        /// The id in the value.
        record: String,
    },
    /// Neither a TCP nor a WebSocket address.
    #[error("record has no address: set addrs.tcp and/or addrs.ws")]
    NoAddress,
    /// `addrs.tcp` is not `host:port`.
    #[error("addrs.tcp {0:?} is not host:port")]
    TcpAddr(String),
    /// `addrs.ws` is not a `ws://` or `wss://` URL.
    #[error("addrs.ws {0:?} is not a ws:// or wss:// URL")]
    WsAddr(String),
    /// Capacity must be at least one connection and at most [`MAX_CAPACITY`].
    #[error("capacity must be at least 1 and at most {MAX_CAPACITY}")]
    Capacity,
    /// More connections than any gateway can hold ([`MAX_CONNECTIONS`]).
    #[error("load.connections {0} is over {MAX_CONNECTIONS}")]
    Connections(u64),
    /// Weight out of range.
    #[error("weight {0} is out of range 1..=10000")]
    Weight(u32),
    /// CPU is negative or not a number.
    #[error("load.cpu {0} must be a finite number >= 0")]
    Cpu(f64),
}

/// Largest `capacity` a record may claim (2^32 connections, far past any real host). With
/// it, a router can add up the capacities of every gateway without overflowing, whatever
/// an agent writes.
pub const MAX_CAPACITY: u64 = 1 << 32;
/// Largest `load.connections` a record may report: the same bound as [`MAX_CAPACITY`]
/// (an overloaded gateway may report more than its capacity, never more than this).
pub const MAX_CONNECTIONS: u64 = 1 << 32;

/// Health and admission state reported by a gateway's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// Accepting new clients.
    #[default]
    Serving,
    /// Shutting down or drained by ops: keeps its clients, takes no new ones.
    Draining,
    /// Its health probe fails: still registered, never handed out.
    Unhealthy,
}

impl GatewayState {
    /// The name used in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where clients connect, per protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Addrs {
    /// `host:port` for the length-prefixed TCP protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `ws://…` or `wss://…` URL for the WebSocket protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
}

/// Load as last reported by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Established client connections.
    #[serde(default)]
    pub connections: u64,
    /// Process CPU use, in cores (0.35 = 35 % of one core).
    #[serde(default)]
    pub cpu: f64,
}

fn default_weight() -> u32 {
    100
}

/// One gateway in the registry (`P/gateways/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// Same as the key's `<id>`.
    pub id: String,
    /// Addresses clients connect to.
    #[serde(default)]
    pub addrs: Addrs,
    /// Region, e.g. `cn-east`; empty when unknown.
    #[serde(default)]
    pub region: String,
    /// Zone within the region, e.g. `sh-a`; empty when unknown.
    #[serde(default)]
    pub zone: String,
    /// Connections the gateway is sized for; load is measured against it.
    pub capacity: u64,
    /// Relative share of new clients at equal utilisation (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Serving, draining or unhealthy.
    #[serde(default)]
    pub state: GatewayState,
    /// Last reported load.
    #[serde(default)]
    pub load: Load,
    /// Gateway software version, free text.
    #[serde(default)]
    pub version: String,
    /// Free-form labels for operators.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the gateway started; drives slow start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When this record was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl GatewayRecord {
    /// Parses and validates a value read from etcd.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: Self =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }

    /// Parses a value read from `P/gateways/<key_id>` and checks it names the same id.
    pub fn from_key_value(key_id: &str, bytes: &[u8]) -> Result<Self, RecordError> {
        validate_id(key_id)?;
        let record = Self::from_json(bytes)?;
        if record.id != key_id {
            return Err(RecordError::IdMismatch {
                key: key_id.to_owned(),
                record: record.id,
            });
        }
        Ok(record)
    }

    /// The JSON written to etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a GatewayRecord always serialises")
    }

    /// Checks every field against the schema.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_id(&self.id)?;
        if self.addrs.tcp.is_none() && self.addrs.ws.is_none() {
            return Err(RecordError::NoAddress);
        }
        if let Some(tcp) = &self.addrs.tcp
            && !is_host_port(tcp)
        {
            return Err(RecordError::TcpAddr(tcp.clone()));
        }
        if let Some(ws) = &self.addrs.ws {
            let rest = ws
                .strip_prefix("ws://")
                .or_else(|| ws.strip_prefix("wss://"));
            let authority = rest.map(|r| r.split('/').next().unwrap_or(""));
            if authority.is_none_or(str::is_empty) {
                return Err(RecordError::WsAddr(ws.clone()));
            }
        }
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(RecordError::Capacity);
        }
        if self.load.connections > MAX_CONNECTIONS {
            return Err(RecordError::Connections(self.load.connections));
        }
        if !(1..=10_000).contains(&self.weight) {
            return Err(RecordError::Weight(self.weight));
        }
        if !self.load.cpu.is_finite() || self.load.cpu < 0.0 {
            return Err(RecordError::Cpu(self.load.cpu));
        }
        Ok(())
    }

    /// The address clients use for `protocol` (`"tcp"` or `"ws"`).
    pub fn addr_for(&self, protocol: &str) -> Option<&str> {
        match protocol {
            "tcp" | "" => self.addrs.tcp.as_deref(),
            "ws" => self.addrs.ws.as_deref(),
            _ => None,
        }
    }
}

/// `host:port` with a non-empty host and a numeric port (IPv6 hosts in brackets).
fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// An ops drain (`P/drain/<id>`): written by `switchyardctl drain`, removed on undrain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainRecord {
    /// Why, for humans.
    #[serde(default)]
    pub reason: String,
    /// Who asked.
    #[serde(default)]
    pub by: String,
    /// When it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

impl DrainRecord {
    /// Parses a drain value. Any JSON object is a drain (even `{}`), so a hand-written
    /// `etcdctl put P/drain/gw-1 '{}'` works; a non-object value is refused.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(|e| RecordError::Json(e.to_string()))
    }

    /// The JSON written to etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a DrainRecord always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "id": "gw-sh-1",
      "addrs": {"tcp": "203.0.113.5:7200", "ws": "ws://203.0.113.5:7202/ws"},
      "region": "cn-east", "zone": "sh-a",
      "capacity": 100000, "weight": 100,
      "state": "serving",
      "load": {"connections": 1234, "cpu": 0.35},
      "version": "0.1.0", "labels": {},
      "started_at": "2026-11-22T01:00:00Z", "updated_at": "2026-11-22T01:05:00Z",
      "some_future_field": {"nested": true}
    }"#;

    #[test]
    fn design_example_parses_and_ignores_unknown_fields() {
        let r = GatewayRecord::from_key_value("gw-sh-1", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.state, GatewayState::Serving);
        assert_eq!(r.load.connections, 1234);
        assert_eq!(r.addr_for("ws"), Some("ws://203.0.113.5:7202/ws"));
        assert_eq!(r.addr_for("tcp"), Some("203.0.113.5:7200"));
        let back = GatewayRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<GatewayRecord, RecordError> {
        let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        f(&mut v);
        GatewayRecord::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        assert!(matches!(
            GatewayRecord::from_json(b"not json"),
            Err(RecordError::Json(_))
        ));
        assert_eq!(
            with(|v| v["capacity"] = 0.into()).unwrap_err(),
            RecordError::Capacity
        );
        assert_eq!(
            with(|v| v["addrs"] = serde_json::json!({})).unwrap_err(),
            RecordError::NoAddress
        );
        assert!(matches!(
            with(|v| v["addrs"]["tcp"] = "nohostport".into()).unwrap_err(),
            RecordError::TcpAddr(_)
        ));
        assert!(matches!(
            with(|v| v["addrs"]["ws"] = "http://x/ws".into()).unwrap_err(),
            RecordError::WsAddr(_)
        ));
        assert!(matches!(
            with(|v| v["state"] = "sleeping".into()).unwrap_err(),
            RecordError::Json(_)
        ));
        assert!(matches!(
            with(|v| v["id"] = "bad id".into()).unwrap_err(),
            RecordError::Id(_)
        ));
        assert_eq!(
            with(|v| v["capacity"] = u64::MAX.into()).unwrap_err(),
            RecordError::Capacity
        );
        assert!(with(|v| v["capacity"] = MAX_CAPACITY.into()).is_ok());
        assert_eq!(
            with(|v| v["load"]["connections"] = u64::MAX.into()).unwrap_err(),
            RecordError::Connections(u64::MAX)
        );
        assert!(with(|v| v["load"]["connections"] = MAX_CONNECTIONS.into()).is_ok());
        assert_eq!(
            with(|v| v["weight"] = 0.into()).unwrap_err(),
            RecordError::Weight(0)
        );
        let mismatch = GatewayRecord::from_key_value("gw-other", EXAMPLE.as_bytes()).unwrap_err();
        assert!(
            mismatch.to_string().contains("does not match"),
            "{mismatch}"
        );
    }

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:7200",
            "[::1]:7200",
            "gw.example.com:443",
            "gw-1:80",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            ":80",
            "host:0",
            "host:99999",
            "::1:80",
            "a b:80",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn drains_accept_any_object() {
        assert_eq!(
            DrainRecord::from_json(b"{}").unwrap(),
            DrainRecord::default()
        );
        let d = DrainRecord::from_json(br#"{"reason":"kernel upgrade","by":"ops"}"#).unwrap();
        assert_eq!(d.reason, "kernel upgrade");
        assert!(DrainRecord::from_json(b"yes").is_err());
    }
}
