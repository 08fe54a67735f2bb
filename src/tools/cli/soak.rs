//! `garage-ipfs soak`: sustained mixed load, every answer checked.

use std::path::PathBuf;
use std::time::Duration;

use crate::tools::soak;

/// Arguments of `garage-ipfs soak`.
#[derive(Debug, clap::Args)]
pub(super) struct SoakArgs {
    /// Concurrent clients; half use HTTP (kubo RPC and gateway), half gRPC.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Most blocks one client holds at once (beyond it, puts turn into
    /// deletes): the stored set, and memory, reach a steady state.
    #[arg(long, default_value_t = 2000)]
    live_cap: usize,
    /// Fail if this process's resident memory (daemon and clients) goes
    /// over this many MiB.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
    /// Fail if more requests than this end in an error (timeouts,
    /// overload, transport). On a healthy cluster none should: raise it
    /// only to soak through faults you cause yourself.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    #[command(flatten)]
    cluster: crate::tools::util::OwnCluster,
    /// Also write the report as JSON to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(super) async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let report =
        crate::tools::util::in_work_dir(args.cluster.dir.clone(), "soak", |dir| async move {
            let opts = soak::Options {
                dir,
                clients: args.clients,
                duration: Duration::from_secs(args.seconds),
                live_cap: args.live_cap,
                max_rss_bytes: args.max_rss_mib << 20,
                nodelay: !args.cluster.no_nodelay,
                db_engine: args.cluster.db_engine,
                progress_every: Duration::from_secs(10),
                max_errors: args.max_errors,
            };
            soak::run(&opts).await
        })
        .await?;
    print_report(&report);
    if let Some(path) = &args.json {
        crate::tools::util::write_json_report(path, &report)?;
    }
    anyhow::ensure!(
        report.passed,
        "soak failed: {} violation(s), {} acknowledged block(s) lost, {} of {} held blocks \
         read back, {} error(s) (bound {}), peak memory {} MiB (bound {} MiB)",
        report.violations.len(),
        report.final_lost.len(),
        report.final_present_verified,
        report.final_held,
        report.errors_total,
        report.max_errors,
        report.peak_rss_bytes >> 20,
        report.max_rss_bytes >> 20
    );
    Ok(())
}

fn print_report(r: &soak::Report) {
    use crate::tools::util::{format_table, Align};
    let mut rows = vec![["SURFACE OP", "OK", "ERRORS"].map(String::from).to_vec()];
    for (op, c) in &r.ops {
        rows.push(vec![op.clone(), c.ok.to_string(), c.errors.to_string()]);
    }
    eprintln!("{}", format_table(&rows, Align::Right));
    if !r.errors.is_empty() {
        eprintln!("errors by class:");
        for (class, n) in &r.errors {
            eprintln!("  {n:>8}  {class}");
        }
    }
    for v in r.violations.iter().chain(&r.final_lost) {
        eprintln!("  LOST OR WRONG: {v}");
    }
    eprintln!(
        "soak: {} clients, {:.0} s, {:.0} ops/s; {} puts and {} deletes acknowledged; \
         at the end, through a fresh connector, {} of {} held blocks read back intact and \
         {} of {} deleted ones absent; {} violation(s), {} lost; {} error(s) (bound {}); \
         memory {} MiB at start, {} MiB peak (bound {} MiB): {}",
        r.clients,
        r.seconds,
        r.ops_per_sec,
        r.puts_acknowledged,
        r.deletes_acknowledged,
        r.final_present_verified,
        r.final_held,
        r.final_absent_verified,
        r.final_deleted_checked,
        r.violations.len(),
        r.final_lost.len(),
        r.errors_total,
        r.max_errors,
        r.start_rss_bytes >> 20,
        r.peak_rss_bytes >> 20,
        r.max_rss_bytes >> 20,
        if r.passed { "PASSED" } else { "FAILED" }
    );
    eprintln!(
        "cluster block storage (all nodes): {} files, {} MiB at start; {} MiB peak; \
         {} files, {} MiB when the load ended, Garage's resync queue {} (it frees deleted \
         blocks' space; see RELIABILITY.md)",
        r.disk_start.block_files,
        r.disk_start.bytes >> 20,
        r.disk_peak_bytes >> 20,
        r.disk_end.block_files,
        r.disk_end.bytes >> 20,
        r.disk_end.resync_queue_text(),
    );
}
