//! Tables and JSON for switchyardctl.

use std::collections::BTreeMap;

use switchyard_proto::v1 as pb;

use crate::Format;

/// A load bar like `[#####-----]` for `used` of `capacity`.
pub(crate) fn bar(used: u64, capacity: u64, width: usize) -> String {
    let frac = if capacity == 0 {
        0.0
    } else {
        (used as f64 / capacity as f64).clamp(0.0, 1.0)
    };
    let filled = (frac * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// "3s", "5m", "2h" since a Unix-ms time; "-" when unknown.
pub(crate) fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let secs = ((chrono::Utc::now().timestamp_millis() - unix_ms).max(0) / 1000) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The state column: reported state, or what overrides it.
pub(crate) fn state(g: &pb::Gateway) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    if g.ops_drained {
        "drained".into()
    } else if g.ejected_until_unix_ms > now {
        format!("ejected({})", g.state)
    } else {
        g.state.clone()
    }
}

/// Renders rows as a borderless table (kubectl style: columns two spaces apart, no
/// trailing blanks) so `grep`, `awk` and `cut` keep working on it.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use comfy_table::{ContentArrangement, Table, presets::NOTHING};
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied())
        .add_rows(rows.iter().cloned());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

pub(crate) fn gateway_rows(resp: &pb::ListGatewaysResponse) -> Vec<Vec<String>> {
    resp.gateways
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                state(g),
                format!("{}/{}", g.region, g.zone),
                format!("{}/{}", g.connections + g.pending, g.capacity),
                bar(g.connections + g.pending, g.capacity, 20),
                age(g.updated_at_unix_ms),
                g.version.clone(),
            ]
        })
        .collect()
}

pub(crate) const GATEWAY_HEADER: [&str; 7] = [
    "ID",
    "STATE",
    "REGION/ZONE",
    "CONNS/CAP",
    "LOAD",
    "AGE",
    "VERSION",
];

pub(crate) fn gateways(resp: &pb::ListGatewaysResponse, source: &str, format: Format) {
    match format {
        Format::Json => {
            let gateways: Vec<_> = resp.gateways.iter().map(gateway_json).collect();
            let v = serde_json::json!({
                "source": source,
                "revision": resp.revision,
                "snapshot_age_ms": resp.snapshot_age_ms,
                "etcd_connected": resp.etcd_connected,
                "gateways": gateways,
            });
            println!("{v:#}");
        }
        Format::Table => {
            println!("{}", table(&GATEWAY_HEADER, &gateway_rows(resp)));
            let (conns, cap) = resp
                .gateways
                .iter()
                .fold((0, 0), |(c, k), g| (c + g.connections, k + g.capacity));
            let stale = if resp.etcd_connected {
                String::new()
            } else {
                ", etcd UNREACHABLE".into()
            };
            println!(
                "{} gateways, {conns}/{cap} connections, revision {} (from {source}, view age {} ms{stale})",
                resp.gateways.len(),
                resp.revision,
                resp.snapshot_age_ms
            );
        }
    }
}

fn gateway_json(g: &pb::Gateway) -> serde_json::Value {
    serde_json::json!({
        "id": g.id, "state": g.state, "region": g.region, "zone": g.zone,
        "tcp_addr": g.tcp_addr, "ws_addr": g.ws_addr,
        "capacity": g.capacity, "weight": g.weight, "connections": g.connections,
        "pending": g.pending, "cpu": g.cpu, "version": g.version, "labels": g.labels,
        "started_at_unix_ms": g.started_at_unix_ms, "updated_at_unix_ms": g.updated_at_unix_ms,
        "ops_drained": g.ops_drained, "drain_reason": g.drain_reason,
        "ejected_until_unix_ms": g.ejected_until_unix_ms,
    })
}

pub(crate) fn route(resp: &pb::RouteResponse, format: Format) {
    match format {
        Format::Json => {
            let gateways: Vec<_> = resp
                .gateways
                .iter()
                .map(|g| serde_json::json!({"id": g.id, "address": g.address, "region": g.region, "zone": g.zone, "score": g.score}))
                .collect();
            let explanation: Vec<_> = resp
                .explanation
                .iter()
                .map(|e| serde_json::json!({"gateway_id": e.gateway_id, "tier": e.tier, "rank": e.rank, "score": e.score, "reason": e.reason}))
                .collect();
            let policy = resp.policy.as_ref().map(|p| {
                serde_json::json!({
                    "heartbeat_interval_ms": p.heartbeat_interval_ms, "heartbeat_timeout_ms": p.heartbeat_timeout_ms,
                    "backoff_base_ms": p.backoff_base_ms, "backoff_cap_ms": p.backoff_cap_ms,
                    "max_attempts": p.max_attempts, "reconnect_spread_ms": p.reconnect_spread_ms,
                })
            });
            let v = serde_json::json!({
                "revision": resp.revision, "valid_for_ms": resp.valid_for_ms,
                "snapshot_age_ms": resp.snapshot_age_ms,
                "gateways": gateways, "explanation": explanation, "policy": policy,
            });
            println!("{v:#}");
        }
        Format::Table => {
            let mut rows: Vec<Vec<String>> = resp
                .explanation
                .iter()
                .map(|e| {
                    vec![
                        if e.rank == 0 {
                            "-".into()
                        } else {
                            e.rank.to_string()
                        },
                        e.gateway_id.clone(),
                        if e.tier.is_empty() {
                            "-".into()
                        } else {
                            e.tier.clone()
                        },
                        format!("{:.3}", e.score),
                        e.reason.clone(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                rows = resp
                    .gateways
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        vec![
                            (i + 1).to_string(),
                            g.id.clone(),
                            "-".into(),
                            format!("{:.3}", g.score),
                            g.address.clone(),
                        ]
                    })
                    .collect();
            }
            rows.sort_by_key(|r| (r[0] == "-", r[0].parse::<u32>().unwrap_or(u32::MAX)));
            println!(
                "{}",
                table(&["RANK", "GATEWAY", "TIER", "SCORE", "WHY"], &rows)
            );
            let answer: Vec<String> = resp
                .gateways
                .iter()
                .map(|g| format!("{} ({})", g.id, g.address))
                .collect();
            println!(
                "answer: {}",
                if answer.is_empty() {
                    "-".into()
                } else {
                    answer.join(", ")
                }
            );
            if let Some(p) = &resp.policy {
                println!(
                    "policy: heartbeat {}ms, timeout {}ms, backoff {}..{}ms, max attempts {}; list valid {}ms; revision {}",
                    p.heartbeat_interval_ms,
                    p.heartbeat_timeout_ms,
                    p.backoff_base_ms,
                    p.backoff_cap_ms,
                    p.max_attempts,
                    resp.valid_for_ms,
                    resp.revision
                );
            }
        }
    }
}

pub(crate) fn done(format: Format, message: &str, json: serde_json::Value) {
    match format {
        Format::Json => println!("{json}"),
        Format::Table => println!("{message}"),
    }
}

/// One line per change: added, removed, or what changed in a gateway.
pub(crate) fn watch_update(
    known: &mut BTreeMap<String, pb::Gateway>,
    update: &pb::GatewaysUpdate,
    format: Format,
) {
    let ts = chrono::Utc::now().format("%H:%M:%S%.3f");
    let mut lines = Vec::new();
    if update.full {
        let fresh: BTreeMap<String, pb::Gateway> = update
            .upserted
            .iter()
            .map(|g| (g.id.clone(), g.clone()))
            .collect();
        for id in known.keys().filter(|id| !fresh.contains_key(*id)) {
            lines.push((id.clone(), "removed".to_owned()));
        }
        for (id, g) in &fresh {
            lines.push((id.clone(), describe(known.get(id), g)));
        }
        *known = fresh;
    } else {
        for g in &update.upserted {
            lines.push((g.id.clone(), describe(known.get(&g.id), g)));
            known.insert(g.id.clone(), g.clone());
        }
        for id in &update.removed {
            known.remove(id);
            lines.push((id.clone(), "removed".to_owned()));
        }
    }
    for (id, what) in lines {
        match format {
            Format::Json => println!(
                "{}",
                serde_json::json!({"time": ts.to_string(), "revision": update.revision, "gateway": id, "change": what})
            ),
            Format::Table => println!("{ts} rev={} {id} {what}", update.revision),
        }
    }
}

fn describe(old: Option<&pb::Gateway>, new: &pb::Gateway) -> String {
    let Some(old) = old else {
        return format!(
            "added state={} zone={}/{} conns={}/{}",
            state(new),
            new.region,
            new.zone,
            new.connections,
            new.capacity
        );
    };
    let mut changes = Vec::new();
    if state(old) != state(new) {
        changes.push(format!("state {}→{}", state(old), state(new)));
    }
    if old.connections != new.connections {
        changes.push(format!("conns {}→{}", old.connections, new.connections));
    }
    if old.pending != new.pending {
        changes.push(format!("pending {}→{}", old.pending, new.pending));
    }
    if old.tcp_addr != new.tcp_addr || old.ws_addr != new.ws_addr {
        changes.push(format!("addr {}→{}", old.tcp_addr, new.tcp_addr));
    }
    if changes.is_empty() {
        "refreshed".into()
    } else {
        changes.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_tables() {
        assert_eq!(bar(5, 10, 10), "[#####-----]");
        assert_eq!(bar(20, 10, 4), "[####]");
        assert_eq!(bar(1, 0, 4), "[----]");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
