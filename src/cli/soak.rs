//! `garage-ipfs soak`: sustained mixed load, every answer checked.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::soak;

/// Arguments of `garage-ipfs soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
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
    /// Cluster directory, kept afterwards (default: a fresh temporary
    /// directory, removed at the end). Its nodes must not be running.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the garage nodes stock, without our TCP_NODELAY preload shim.
    #[arg(long)]
    no_nodelay: bool,
    /// Also write the report as JSON to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let report = super::util::in_work_dir(args.dir.clone(), "soak", |dir| async move {
        let opts = soak::Options {
            dir,
            clients: args.clients,
            duration: Duration::from_secs(args.seconds),
            live_cap: args.live_cap,
            max_rss_bytes: args.max_rss_mib << 20,
            nodelay: !args.no_nodelay,
            progress_every: Duration::from_secs(10),
        };
        soak::run(&opts).await
    })
    .await?;
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    anyhow::ensure!(
        report.passed,
        "soak failed: {} violation(s), {} acknowledged block(s) lost, peak memory {} MiB (bound {} MiB)",
        report.violations.len(),
        report.final_lost.len(),
        report.peak_rss_bytes >> 20,
        report.max_rss_bytes >> 20
    );
    Ok(())
}

fn print_report(r: &soak::Report) {
    use crate::cli::util::{format_table, Align};
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
         at the end {} held blocks read back intact and {} deleted ones absent; \
         {} violation(s), {} lost; memory {} MiB at start, {} MiB peak (bound {} MiB): {}",
        r.clients,
        r.seconds,
        r.ops_per_sec,
        r.puts_acknowledged,
        r.deletes_acknowledged,
        r.final_present_verified - r.final_lost.len().min(r.final_present_verified as usize) as u64,
        r.final_absent_verified,
        r.violations.len(),
        r.final_lost.len(),
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
