//! `garage-ipfs nemesis`: the fault-injection checker.

use std::path::PathBuf;
use std::time::Duration;

use crate::tools::nemesis;
use crate::tools::util::outln;

/// Arguments of `garage-ipfs nemesis`.
#[derive(Debug, clap::Args)]
pub(super) struct NemesisArgs {
    /// The seed: the same seed draws the same faults, jobs and client
    /// choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of load under faults (the read-back comes after).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// The settle time, in ms: how long after its acknowledgement a write
    /// or a delete must be seen by every daemon and connector.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Blocks in the shared pool the clients write, delete and read.
    #[arg(long, default_value_t = 2000)]
    pool: usize,
    /// gRPC clients per daemon (each daemon also gets an HTTP client, and a
    /// CLI connector client runs beside them).
    #[arg(long, default_value_t = 2)]
    grpc_clients: usize,
    /// No partitions: nodes and daemons on 127.0.0.1 (partitions need
    /// root, for network namespaces).
    #[arg(long)]
    no_partitions: bool,
    /// No clock offsets (they need libfaketime: apt-get install faketime).
    #[arg(long)]
    no_clocks: bool,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 6.0)]
    fault_every: f64,
    /// Mean seconds between admin jobs (compact, gc, verify, repair).
    #[arg(long, default_value_t = 8.0)]
    job_every: f64,
    /// Longest pause (SIGSTOP) of a daemon, in seconds.
    #[arg(long, default_value_t = 20)]
    max_daemon_pause: u64,
    /// Longest pause of a compactor, in seconds (over its 2-minute lease by
    /// default).
    #[arg(long, default_value_t = 150)]
    max_job_pause: u64,
    /// Write the history (JSON lines) here (default: in --dir, or in the
    /// temporary directory, named after the seed).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Check a history written before, and run nothing.
    #[arg(long, value_name = "HISTORY", conflicts_with_all = ["seed", "history"])]
    check: Option<PathBuf>,
    /// Fail only on these anomaly kinds (comma-separated; default: every
    /// kind). The report names every anomaly found either way.
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    fail_on: Vec<String>,
    /// Also write the report as JSON to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    cluster: crate::tools::util::OwnCluster,
}

/// The anomaly kinds the checker reports.
const KINDS: &[&str] = &[
    "lost-write",
    "resurrection",
    "false-absent",
    "stale-present",
    "corrupt-read",
    "listing-missed",
    "gc-removed-reachable",
    "final-unchecked",
];

pub(super) async fn run(args: NemesisArgs) -> anyhow::Result<()> {
    if let Some(k) = args.fail_on.iter().find(|k| !KINDS.contains(&k.as_str())) {
        anyhow::bail!(
            "--fail-on: no anomaly kind {k:?} (kinds: {})",
            KINDS.join(", ")
        );
    }
    let report = match &args.check {
        Some(path) => nemesis::check::check_file(path)?,
        None => {
            let seed = args.seed.unwrap_or_else(rand::random);
            let history = args
                .history
                .clone()
                .unwrap_or_else(|| match &args.cluster.dir {
                    Some(dir) => dir.join(format!("history-{seed}.jsonl")),
                    None => std::env::temp_dir().join(format!("garage-ipfs-nemesis-{seed}.jsonl")),
                });
            let opts = nemesis::Options {
                dir: PathBuf::new(),
                history: history.clone(),
                seed,
                duration: Duration::from_secs(args.seconds),
                settle: Duration::from_millis(args.settle_ms),
                pool: args.pool,
                grpc_clients: args.grpc_clients,
                partitions: !args.no_partitions,
                clocks: !args.no_clocks,
                fault_every: Duration::from_secs_f64(args.fault_every),
                job_every: Duration::from_secs_f64(args.job_every),
                max_daemon_pause: Duration::from_secs(args.max_daemon_pause),
                max_job_pause: Duration::from_secs(args.max_job_pause),
                db_engine: args.cluster.db_engine,
            };
            let report = crate::tools::util::in_work_dir(
                args.cluster.dir.clone(),
                "nemesis",
                |dir| async move { nemesis::run(&nemesis::Options { dir, ..opts }).await },
            )
            .await?;
            eprintln!("nemesis: history in {}", history.display());
            report
        }
    };
    print_report(&report);
    if let Some(path) = &args.json {
        crate::tools::util::write_json_report(path, &report)?;
    }
    let failing = report
        .anomalies
        .iter()
        .filter(|a| args.fail_on.is_empty() || args.fail_on.contains(&a.kind))
        .count();
    if failing > 0 {
        anyhow::bail!(
            "{failing} anomal{} (seed {}): replay with --seed {}",
            if failing == 1 { "y" } else { "ies" },
            report.seed,
            report.seed
        );
    }
    Ok(())
}

fn print_report(r: &nemesis::Report) {
    outln!(
        "seed {}: {} operations, {} acknowledged writes, {} acknowledged removals; settle {} ms",
        r.seed,
        r.operations,
        r.acknowledged_writes,
        r.acknowledged_removals,
        r.settle_ms
    );
    for (f, c) in &r.by_f {
        outln!("  {f:<8} {c:?}");
    }
    let nemeses: Vec<String> = r.nemeses.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("nemesis events: {}", nemeses.join(", "));
    outln!(
        "absent within the settle time: {}; present within it: {}; listings during a compaction: {}; keys read back: {}",
        r.absent_within_settle,
        r.present_within_settle,
        r.listings_during_compaction,
        r.final_checked
    );
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for a in &r.anomalies {
        *kinds.entry(a.kind.as_str()).or_default() += 1;
    }
    outln!("anomalies: {} {:?}", r.anomalies.len(), kinds);
    for a in r.anomalies.iter().take(30) {
        outln!(
            "  {} {} op {} {}@{} t={:.0}ms: {}",
            a.kind,
            a.key,
            a.op,
            a.proc,
            a.via,
            a.t_ms,
            a.detail
        );
    }
}
