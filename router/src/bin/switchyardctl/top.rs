//! `switchyardctl top`: a live terminal UI (ratatui over crossterm) of the routers and every
//! gateway: load bars, state, hand-outs not yet in a load report, ejections and drains in
//! progress. `--once` renders one frame into an off-screen buffer and prints it as text,
//! so scripts and tests see exactly what the screen shows.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use tonic::transport::Channel;

use crate::output::{age, bar, state};
use crate::{Cli, authed, explain_status};

/// What one router says, as one row of the routers table.
#[derive(Debug, Clone)]
pub(crate) struct RouterView {
    /// The address it was asked at.
    pub(crate) url: String,
    /// Registry revision of its view.
    pub(crate) revision: i64,
    /// How old its view is (time since etcd last answered it).
    pub(crate) snapshot_age_ms: u64,
    /// Whether its etcd watch is up.
    pub(crate) etcd_connected: bool,
    /// Route answers per second since the previous refresh (`None` on the first).
    pub(crate) routes_per_s: Option<f64>,
    /// Clients it handed out that no load report counts yet.
    pub(crate) pending: u64,
}

/// One refresh: every router asked (today the one `--router` names; the list is ready for
/// routers read from the registry) and the gateways as the first of them sees them.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    /// Routers, in the order asked.
    pub(crate) routers: Vec<RouterView>,
    /// Gateways, sorted by id.
    pub(crate) gateways: Vec<pb::Gateway>,
}

impl Fleet {
    fn from_list(url: &str, resp: pb::ListGatewaysResponse, routes_per_s: Option<f64>) -> Self {
        let mut gateways = resp.gateways;
        gateways.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            routers: vec![RouterView {
                url: url.to_owned(),
                revision: resp.revision,
                snapshot_age_ms: resp.snapshot_age_ms,
                etcd_connected: resp.etcd_connected,
                routes_per_s,
                pending: gateways.iter().map(|g| g.pending).sum(),
            }],
            gateways,
        }
    }

    /// Gateways being drained (by ops or by their own signal) that still hold clients.
    fn drains(&self) -> impl Iterator<Item = &pb::Gateway> {
        self.gateways
            .iter()
            .filter(|g| g.ops_drained || g.state == "draining")
    }

    fn ejected(&self) -> usize {
        let now = chrono::Utc::now().timestamp_millis();
        self.gateways
            .iter()
            .filter(|g| g.ejected_until_unix_ms > now)
            .count()
    }

    /// Rows the frame needs to show everything (tables: border 2 + header 1 + rows).
    fn height(&self) -> u16 {
        let drains = self.drains().count().max(1);
        (2 + (3 + self.routers.len()) + (3 + self.gateways.len()) + (3 + drains)) as u16
    }
}

/// Polls the router every `interval`; full screen until `q`, Esc or Ctrl-C, or one text
/// frame with `once`; `iterations` > 0 stops after that many refreshes.
pub(crate) async fn run(
    mut router: RouterClient<Channel>,
    cli: &Cli,
    interval: Duration,
    iterations: u64,
    once: Option<u16>,
) -> Result<()> {
    let mut last: Option<(Instant, u64)> = None;
    let mut fetch = async |last: &mut Option<(Instant, u64)>| -> Result<Fleet> {
        let resp = router
            .list_gateways(authed(cli, pb::ListGatewaysRequest {})?)
            .await
            .map_err(|s| explain_status(cli, s))?
            .into_inner();
        let now = Instant::now();
        let rate = last.map(|(t, total)| {
            resp.routes_total.saturating_sub(total) as f64 / now.duration_since(t).as_secs_f64()
        });
        *last = Some((now, resp.routes_total));
        Ok(Fleet::from_list(&cli.router, resp, rate))
    };

    if let Some(width) = once {
        let fleet = fetch(&mut last).await?;
        print!("{}", render_text(&fleet, width)?);
        return Ok(());
    }

    if !std::io::stdout().is_terminal() {
        anyhow::bail!("stdout is not a terminal: pass --once to print one frame as text");
    }
    // Keys come from a blocking read on their own thread: the runtime here is single
    // threaded, and a blocked poll must not stall the refresh.
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if keys_tx.send(ev).is_err() {
                break;
            }
        }
    });
    let mut terminal =
        ratatui::try_init().context("switchyardctl top needs a terminal (or pass --once)")?;
    let result = async {
        let mut ticker = tokio::time::interval(interval);
        let mut fleet: Option<Fleet> = None;
        let mut error: Option<String> = None;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    match fetch(&mut last).await {
                        Ok(f) => { fleet = Some(f); error = None; }
                        Err(e) => error = Some(format!("{e:#}")),
                    }
                    n += 1;
                }
                key = keys.recv() => {
                    if quit(key) { break; }
                }
                _ = tokio::signal::ctrl_c() => break,
            }
            terminal.draw(|f| match &fleet {
                Some(fleet) => draw(f, fleet, error.as_deref()),
                None => f.render_widget(
                    Paragraph::new(error.clone().unwrap_or_else(|| "asking the router…".into())),
                    f.area(),
                ),
            })?;
            if iterations > 0 && n >= iterations {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    result
}

fn quit(key: Option<Event>) -> bool {
    match key {
        None => true,
        Some(Event::Key(k)) if k.kind == KeyEventKind::Press => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        Some(_) => false,
    }
}

/// One frame drawn off screen, as lines of text (trailing blanks trimmed).
pub(crate) fn render_text(fleet: &Fleet, width: u16) -> Result<String> {
    let backend = ratatui::backend::TestBackend::new(width, fleet.height());
    let mut terminal = ratatui::Terminal::new(backend)?;
    terminal.draw(|f| draw(f, fleet, None))?;
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn load_color(used: u64, capacity: u64) -> Color {
    let frac = used as f64 / capacity.max(1) as f64;
    if frac >= 0.9 {
        Color::Red
    } else if frac >= 0.7 {
        Color::Yellow
    } else {
        Color::Green
    }
}

fn state_style(s: &str) -> Style {
    match s {
        "serving" => Style::default().fg(Color::Green),
        "draining" | "drained" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn draw(f: &mut Frame<'_>, fleet: &Fleet, error: Option<&str>) {
    let drains: Vec<&pb::Gateway> = fleet.drains().collect();
    let [head, routers, gateways, drain_area] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(3 + fleet.routers.len() as u16),
        Constraint::Min(4),
        Constraint::Length(3 + drains.len().max(1) as u16),
    ])
    .areas(f.area());
    draw_head(f, head, fleet, error);
    draw_routers(f, routers, fleet);
    draw_gateways(f, gateways, fleet);
    draw_drains(f, drain_area, &drains);
}

fn draw_head(f: &mut Frame<'_>, area: Rect, fleet: &Fleet, error: Option<&str>) {
    let (conns, pending, cap) = fleet.gateways.iter().fold((0, 0, 0), |(c, p, k), g| {
        (c + g.connections, p + g.pending, k + g.capacity)
    });
    let serving = fleet
        .gateways
        .iter()
        .filter(|g| g.state == "serving" && !g.ops_drained)
        .count();
    let mut lines = vec![Line::from(vec![
        Span::styled(
            "switchyard top",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "   routers {}   gateways {} ({serving} serving, {} ejected)   connections {conns} (+{pending} handed out) / {cap}",
            fleet.routers.len(),
            fleet.gateways.len(),
            fleet.ejected(),
        )),
    ])];
    lines.push(match error {
        Some(e) => Line::styled(
            format!("last refresh failed: {e}"),
            Style::default().fg(Color::Red),
        ),
        None => Line::raw("q, Esc or Ctrl-C quits"),
    });
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_routers(f: &mut Frame<'_>, area: Rect, fleet: &Fleet) {
    let rows = fleet.routers.iter().map(|r| {
        let etcd = if r.etcd_connected {
            Cell::from("up").style(Style::default().fg(Color::Green))
        } else {
            Cell::from("UNREACHABLE").style(Style::default().fg(Color::Red))
        };
        Row::new(vec![
            Cell::from(r.url.clone()),
            etcd,
            Cell::from(r.revision.to_string()),
            Cell::from(format!("{} ms", r.snapshot_age_ms)),
            Cell::from(r.routes_per_s.map_or("-".into(), |v| format!("{v:.0}"))),
            Cell::from(r.pending.to_string()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(24),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "ROUTER", "ETCD", "REVISION", "VIEW AGE", "ROUTES/S", "HANDOUTS",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" routers "));
    f.render_widget(table, area);
}

fn draw_gateways(f: &mut Frame<'_>, area: Rect, fleet: &Fleet) {
    let now = chrono::Utc::now().timestamp_millis();
    let rows = fleet.gateways.iter().map(|g| {
        let used = g.connections + g.pending;
        let st = state(g);
        let ejected = if g.ejected_until_unix_ms > now {
            format!("{}s", (g.ejected_until_unix_ms - now + 999) / 1000)
        } else {
            "-".into()
        };
        Row::new(vec![
            Cell::from(g.id.clone()),
            Cell::from(st.clone()).style(state_style(&st)),
            Cell::from(format!("{}/{}", g.region, g.zone)),
            Cell::from(format!("{used}/{}", g.capacity)),
            Cell::from(bar(used, g.capacity, 20))
                .style(Style::default().fg(load_color(used, g.capacity))),
            Cell::from(g.pending.to_string()),
            Cell::from(ejected),
            Cell::from(age(g.updated_at_unix_ms)),
            Cell::from(g.version.clone()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(18),
            Constraint::Length(14),
            Constraint::Length(14),
            Constraint::Length(22),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "GATEWAY",
            "STATE",
            "REGION/ZONE",
            "CONNS/CAP",
            "LOAD",
            "HANDOUTS",
            "EJECTED",
            "AGE",
            "VERSION",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" gateways "));
    f.render_widget(table, area);
}

fn draw_drains(f: &mut Frame<'_>, area: Rect, drains: &[&pb::Gateway]) {
    let block = Block::bordered().title(" drains in progress ");
    if drains.is_empty() {
        f.render_widget(Paragraph::new("none").block(block), area);
        return;
    }
    let rows = drains.iter().map(|g| {
        let by = if g.ops_drained { "ops" } else { "signal" };
        Row::new(vec![
            Cell::from(g.id.clone()),
            Cell::from(by),
            Cell::from(g.connections.to_string()),
            Cell::from(if g.drain_reason.is_empty() {
                "-".to_owned()
            } else {
                g.drain_reason.clone()
            }),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(["GATEWAY", "BY", "CONNS LEFT", "REASON"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str, state: &str, conns: u64, ops_drained: bool) -> pb::Gateway {
        pb::Gateway {
            id: id.into(),
            state: state.into(),
            region: "r1".into(),
            zone: "z1".into(),
            capacity: 100,
            connections: conns,
            ops_drained,
            drain_reason: if ops_drained {
                "kernel".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn one_frame_shows_routers_gateways_and_drains() {
        let fleet = Fleet::from_list(
            "http://r:7100",
            pb::ListGatewaysResponse {
                gateways: vec![
                    gw("gw-b", "serving", 50, false),
                    gw("gw-a", "serving", 7, true),
                ],
                revision: 42,
                snapshot_age_ms: 15,
                etcd_connected: true,
                routes_total: 0,
            },
            Some(3.0),
        );
        let text = render_text(&fleet, 120).unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .to_owned()
        };
        assert!(line("http://r:7100").contains("42"), "{text}");
        let b = line("│gw-b");
        assert!(
            b.contains("serving") && b.contains("50/100") && b.contains("[##########----------]"),
            "{b}"
        );
        assert!(line("│gw-a ").contains("drained"), "{text}");
        let drain = text.split("drains in progress").nth(1).expect("drains box");
        assert!(
            drain.contains("gw-a") && drain.contains("kernel") && !drain.contains("gw-b"),
            "{drain}"
        );
        assert_eq!(text.lines().count() as u16, fleet.height());
    }
}
