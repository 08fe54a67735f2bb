//! `garage-ipfs bench`: the connector, Garage's S3 API and the local disk
//! side by side on a fresh three-node cluster.

use crate::tools::util::outln;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::tools::bench::{self, SystemKind, Workload};

/// Arguments of `garage-ipfs bench`.
#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    #[command(flatten)]
    cluster: crate::tools::util::OwnCluster,
    /// Multiply every op count by this factor (1, the default, takes about
    /// seven minutes on two cores).
    #[arg(long, value_name = "FACTOR", conflicts_with = "quick")]
    ops_scale: Option<f64>,
    /// A smoke test of a minute or two: op counts times 0.05, shorter
    /// pauses.
    #[arg(long)]
    quick: bool,
    /// Systems to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "connector,colocated,floor,s3,local"
    )]
    systems: Vec<SystemKind>,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Skip the scale curve (10^3 to 10^5 blocks stored) and the filter
    /// build times.
    #[arg(long)]
    no_scale: bool,
    /// Also write the results as JSON to FILE (`-`: stdout, the tables then
    /// go to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Op-count factor of `--quick`.
const QUICK_SCALE: f64 = 0.05;

pub(super) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    let mut systems = Vec::new();
    for s in SystemKind::ALL {
        if args.systems.contains(&s) {
            systems.push(s);
        }
    }
    let workloads = Workload::ALL
        .into_iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.contains(w))
        .collect();
    let opts = |dir| bench::Options {
        dir,
        nodelay: !args.cluster.no_nodelay,
        db_engine: args.cluster.db_engine,
        ops_scale: args
            .ops_scale
            .unwrap_or(if args.quick { QUICK_SCALE } else { 1.0 }),
        quick: args.quick,
        systems,
        workloads,
        scale_curve: !args.no_scale,
        pause: Duration::from_millis(if args.quick { 500 } else { 1000 }),
        tables_to_stderr: json_to_stdout,
    };
    let report =
        crate::tools::util::in_work_dir(args.cluster.dir.clone(), "bench", |dir| async move {
            bench::run(&opts(dir)).await
        })
        .await?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if json_to_stdout {
            outln!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("bench: results written to {}", path.display());
        }
    }
    Ok(())
}
