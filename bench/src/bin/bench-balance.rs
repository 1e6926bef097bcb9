//! Balance: the real ranking code with two router replicas' state, 5 gateways, 20 000
//! logins, then one gateway killed and its clients re-routed. The same event sequence is
//! replayed against least-loaded-on-reported-load, uniform random and round-robin.

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_bench::fixture;
use switchyard_bench::stats::max_over_mean;
use switchyard_router::ranking::{self, Candidate, Live};

/// Balance of our ranking against the usual alternatives, same events for all.
#[derive(Debug, Parser)]
#[command(name = "bench-balance")]
struct Args {
    /// Accepted for symmetry with the other drivers; the full run already takes < 1 s.
    #[arg(long)]
    quick: bool,
    /// Clients logging in.
    #[arg(long, default_value_t = 20_000)]
    clients: usize,
    /// Gateways.
    #[arg(long, default_value_t = 5)]
    gateways: usize,
    /// Logins per second over both replicas.
    #[arg(long, default_value_t = 2_000)]
    login_rate: u64,
    /// Agents report load this often (ms); between reports each replica knows only its
    /// own hand-outs.
    #[arg(long, default_value_t = 1_000)]
    report_ms: u64,
    /// Re-routes after the kill arrive spread uniformly over this window (ms).
    #[arg(long, default_value_t = 5_000)]
    spread_ms: u64,
    /// Random seed for the event sequence.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// One login (or re-login): when, who, through which replica.
#[derive(Debug, Clone, Copy)]
struct Login {
    at_ms: u64,
    client: usize,
    replica: usize,
}

/// A way of picking a gateway, with whatever per-replica state it keeps.
trait Picker {
    fn name(&self) -> &'static str;
    /// `alive[i]` is false for the killed gateway; `reported` is the last report.
    fn pick(
        &mut self,
        login: &Login,
        cands: &[Candidate],
        alive: &[bool],
        reported: &[u64],
    ) -> usize;
    /// A load report arrived (every gateway at once).
    fn reported(&mut self) {}
}

/// Our ranking: per replica, hand-outs since the last report count as pending.
struct Ours {
    pending: Vec<Vec<u64>>,
    params: ranking::Params,
    scratch: ranking::Scratch,
    out: Vec<ranking::Placed>,
}

struct Pending<'a> {
    pending: &'a [u64],
    alive: &'a [bool],
}

impl Live for Pending<'_> {
    fn pending(&self, i: usize) -> u64 {
        self.pending[i]
    }
    fn ejected(&self, i: usize) -> bool {
        // A dead gateway is out of the view (its lease expired); ejecting it is the same
        // to ranking and keeps indices stable.
        !self.alive[i]
    }
}

impl Picker for Ours {
    fn name(&self) -> &'static str {
        "ours"
    }
    fn pick(&mut self, l: &Login, cands: &[Candidate], alive: &[bool], reported: &[u64]) -> usize {
        let mut cands = cands.to_vec();
        for (c, r) in cands.iter_mut().zip(reported) {
            c.connections = *r;
        }
        let id = format!("client-{}", l.client);
        let req = ranking::Request {
            client_id: &id,
            region: "",
            zone: "",
            protocol: ranking::Protocol::Tcp,
            limit: 1,
            exclude: &[],
            now_ms: 0,
            seed: l.at_ms,
        };
        let live = Pending {
            pending: &self.pending[l.replica],
            alive,
        };
        ranking::rank(
            &cands,
            &ranking::Index::new(&cands),
            &live,
            &req,
            &self.params,
            &mut self.scratch,
            &mut self.out,
        )
        .expect("a gateway is alive");
        let g = self.out[0].index;
        self.pending[l.replica][g] += 1;
        g
    }
    fn reported(&mut self) {
        for p in &mut self.pending {
            p.iter_mut().for_each(|x| *x = 0);
        }
    }
}

/// Least loaded by the last report only (what a router reading agent load does without
/// tracking its own hand-outs).
struct LeastLoaded;

impl Picker for LeastLoaded {
    fn name(&self) -> &'static str {
        "least_loaded"
    }
    fn pick(&mut self, _: &Login, cands: &[Candidate], alive: &[bool], reported: &[u64]) -> usize {
        (0..cands.len())
            .filter(|&i| alive[i])
            .min_by(|&a, &b| {
                let ua = reported[a] as f64 / cands[a].capacity as f64;
                let ub = reported[b] as f64 / cands[b].capacity as f64;
                ua.total_cmp(&ub).then(a.cmp(&b))
            })
            .expect("a gateway is alive")
    }
}

/// Uniformly random over the live gateways.
struct Random(StdRng);

impl Picker for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn pick(&mut self, _: &Login, _: &[Candidate], alive: &[bool], _: &[u64]) -> usize {
        let live: Vec<usize> = (0..alive.len()).filter(|&i| alive[i]).collect();
        live[self.0.random_range(0..live.len())]
    }
}

/// Round-robin over the live gateways, one counter per replica.
struct RoundRobin(Vec<usize>);

impl Picker for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn pick(&mut self, l: &Login, _: &[Candidate], alive: &[bool], _: &[u64]) -> usize {
        let live: Vec<usize> = (0..alive.len()).filter(|&i| alive[i]).collect();
        let n = &mut self.0[l.replica];
        *n += 1;
        live[*n % live.len()]
    }
}

/// Max/mean after the logins and after the re-routes (over the survivors).
struct Outcome {
    after_login: f64,
    after_kill: f64,
}

fn replay(
    args: &Args,
    picker: &mut dyn Picker,
    cands: &[Candidate],
    logins: &[Login],
    rng: &mut StdRng,
) -> Outcome {
    let g = cands.len();
    let mut alive = vec![true; g];
    let mut truth = vec![0u64; g];
    let mut reported = vec![0u64; g];
    let mut on = vec![usize::MAX; args.clients];
    let mut next_report = args.report_ms;
    let mut run = |events: &[Login],
                   alive: &[bool],
                   truth: &mut Vec<u64>,
                   reported: &mut Vec<u64>,
                   on: &mut Vec<usize>,
                   next_report: &mut u64| {
        for l in events {
            while l.at_ms >= *next_report {
                reported.clone_from(truth);
                picker.reported();
                *next_report += args.report_ms;
            }
            let pick = picker.pick(l, cands, alive, reported);
            truth[pick] += 1;
            on[l.client] = pick;
        }
    };
    run(
        logins,
        &alive,
        &mut truth,
        &mut reported,
        &mut on,
        &mut next_report,
    );
    let after_login = max_over_mean(truth.iter().map(|&x| x as usize)).unwrap_or(f64::NAN);
    // Kill gateway 0 right after the next report; its clients come back spread over the window.
    let killed = 0;
    alive[killed] = false;
    truth[killed] = 0;
    let t0 = logins.last().map_or(0, |l| l.at_ms) + 1;
    let mut again: Vec<Login> = (0..args.clients)
        .filter(|&c| on[c] == killed)
        .map(|client| Login {
            at_ms: t0 + rng.random_range(0..args.spread_ms.max(1)),
            client,
            replica: rng.random_range(0..2),
        })
        .collect();
    again.sort_by_key(|l| l.at_ms);
    run(
        &again,
        &alive,
        &mut truth,
        &mut reported,
        &mut on,
        &mut next_report,
    );
    let survivors = (0..g).filter(|&i| alive[i]).map(|i| truth[i] as usize);
    Outcome {
        after_login,
        after_kill: max_over_mean(survivors).unwrap_or(f64::NAN),
    }
}

fn main() {
    let args = Args::parse();
    let mut cands: Vec<Candidate> = (0..args.gateways)
        .map(|n| {
            let mut rec = fixture::record(n, 10_000);
            rec.region.clear();
            rec.zone.clear();
            rec.load.connections = 0;
            fixture::candidate(&rec)
        })
        .collect();
    cands.sort_by(|a, b| a.id.cmp(&b.id));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let gap = 1_000.0 / args.login_rate.max(1) as f64;
    let logins: Vec<Login> = (0..args.clients)
        .map(|client| Login {
            at_ms: (client as f64 * gap) as u64,
            client,
            replica: rng.random_range(0..2),
        })
        .collect();
    let mut pickers: Vec<Box<dyn Picker>> = vec![
        Box::new(Ours {
            pending: vec![vec![0; cands.len()]; 2],
            params: ranking::Params::default(),
            scratch: ranking::Scratch::new(),
            out: Vec::new(),
        }),
        Box::new(LeastLoaded),
        Box::new(Random(StdRng::seed_from_u64(args.seed ^ 1))),
        Box::new(RoundRobin(vec![0, 1])),
    ];
    let mut summary = Vec::new();
    for p in &mut pickers {
        // Every strategy sees the same re-route timing and replica choices.
        let mut rng = StdRng::seed_from_u64(args.seed ^ 2);
        let o = replay(&args, p.as_mut(), &cands, &logins, &mut rng);
        println!(
            "{:>12}: max/mean after {} logins = {:.3}; after killing 1 of {} and re-routing = {:.3}",
            p.name(),
            args.clients,
            o.after_login,
            args.gateways,
            o.after_kill
        );
        summary.push(format!(
            "{0}_login={1:.3} {0}_failover={2:.3}",
            p.name(),
            o.after_login,
            o.after_kill
        ));
    }
    println!(
        "bench-balance: clients={} gateways={} replicas=2 report_ms={} {}",
        args.clients,
        args.gateways,
        args.report_ms,
        summary.join(" ")
    );
}
