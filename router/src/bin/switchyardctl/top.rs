//! `switchyardctl top`: a full-screen view redrawn every interval with plain ANSI escapes.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use tonic::transport::Channel;

use crate::output::{GATEWAY_HEADER, gateway_rows, table};
use crate::{Cli, authed, explain_status};

pub(crate) async fn run(
    mut router: RouterClient<Channel>,
    cli: &Cli,
    interval: Duration,
    iterations: u64,
) -> Result<()> {
    let mut last: Option<(Instant, u64)> = None;
    let mut n = 0u64;
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let resp = router
            .list_gateways(authed(cli, pb::ListGatewaysRequest {})?)
            .await
            .map_err(|s| explain_status(cli, s))?
            .into_inner();
        let now = Instant::now();
        let rate = last.map(|(t, total)| {
            resp.routes_total.saturating_sub(total) as f64 / now.duration_since(t).as_secs_f64()
        });
        last = Some((now, resp.routes_total));
        let (conns, pending, cap) = resp.gateways.iter().fold((0, 0, 0), |(c, p, k), g| {
            (c + g.connections, p + g.pending, k + g.capacity)
        });
        let serving = resp
            .gateways
            .iter()
            .filter(|g| g.state == "serving" && !g.ops_drained)
            .count();
        let mut screen = String::from("\x1b[H\x1b[2J");
        screen.push_str(&format!(
            "switchyard top — {}   revision {}   view age {} ms{}\n",
            cli.router,
            resp.revision,
            resp.snapshot_age_ms,
            if resp.etcd_connected {
                ""
            } else {
                "   ETCD UNREACHABLE"
            }
        ));
        screen.push_str(&format!(
            "gateways {} ({serving} serving)   connections {conns} (+{pending} pending) / {cap}   routes/s {}\n\n",
            resp.gateways.len(),
            rate.map_or("-".into(), |r| format!("{r:.0}"))
        ));
        screen.push_str(&table(&GATEWAY_HEADER, &gateway_rows(&resp)));
        screen.push_str("\n\nCtrl-C to quit\n");
        let mut out = std::io::stdout().lock();
        out.write_all(screen.as_bytes())?;
        out.flush()?;
        n += 1;
        if iterations > 0 && n >= iterations {
            break;
        }
    }
    Ok(())
}
