//! The `garage-ipfs` command line: one file per noun.

mod bench;
mod block;
mod car;
mod check;
mod cluster;
mod dev;
mod kubo;
mod namespace;
mod nemesis;
mod serve;
mod soak;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::tools::util;

pub use cluster::ClusterCmd;

/// Default cluster directory of the dev cluster.
pub const DEFAULT_DEV_DIR: &str = ".garage-ipfs/dev";

/// IPFS blocks stored durably in a Garage cluster.
#[derive(Debug, Parser)]
#[command(name = "garage-ipfs", version, about, long_about = None)]
#[command(after_help = "Start here:\n  garage-ipfs dev            \
    bring up a local three-node Garage cluster and check it end to end\n  \
    garage-ipfs cluster down   stop it")]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    target: util::Target,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up the local dev cluster (three garage nodes), run a smoke
    /// test through the store, then serve the daemon until Ctrl-C.
    #[command(after_help = "Examples:\n  garage-ipfs dev\n  garage-ipfs dev --dir /tmp/gi-dev")]
    Dev(dev::DevArgs),
    /// Run the daemon: trustless gateway, kubo RPC and gRPC over the store.
    #[command(
        after_help = "Example:\n  garage-ipfs serve --config .garage-ipfs/dev/connector.toml"
    )]
    Serve(serve::ServeArgs),
    /// Manage the local dev cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The cluster as the connector sees it: nodes, layout, health, namespaces.
    #[command(
        after_help = "Examples:\n  garage-ipfs status\n  garage-ipfs status --json | jq .health"
    )]
    Status {
        /// Also count bytes per namespace (lists every index: slower).
        #[arg(long)]
        bytes: bool,
        #[command(flatten)]
        json: util::JsonArg,
    },
    /// Create, list, inspect and delete namespaces.
    #[command(subcommand)]
    Namespace(namespace::NamespaceCmd),
    /// Put, get, stat, remove and list blocks.
    #[command(subcommand)]
    Block(block::BlockCmd),
    /// Import and export CAR files.
    #[command(subcommand)]
    Car(car::CarCmd),
    /// Check every block's index entry, ref and replicas; exit code 0 only
    /// when all is well.
    #[command(
        after_help = "Examples:\n  garage-ipfs verify --namespace photos\n  garage-ipfs verify --sample 100 --json"
    )]
    Verify(check::VerifyArgs),
    /// Re-put missing or corrupt replicas from a good copy and fix refs;
    /// idempotent.
    #[command(
        after_help = "Examples:\n  garage-ipfs repair --dry-run\n  garage-ipfs repair --namespace photos"
    )]
    Repair(check::RepairArgs),
    /// Remove the blocks of a namespace not reachable from the listed roots.
    #[command(
        after_help = "Example:\n  garage-ipfs gc --namespace photos --keep roots.txt --dry-run"
    )]
    Gc(check::GcArgs),
    /// Rewrite packs of small blocks that are mostly deleted, and remove
    /// packs no read needs any more (no live block; retired, or never
    /// named by a manifest, longer ago than the grace period).
    #[command(
        after_help = "Examples:\n  garage-ipfs compact --namespace photos --dry-run\n  garage-ipfs compact --namespace photos --json"
    )]
    Compact(check::CompactArgs),
    /// kubo nodes whose blocks live in Garage: make a repo, build kubo
    /// with the datastore plugin.
    #[command(subcommand)]
    Kubo(kubo::KuboCmd),
    /// Benchmark the connector against Garage's S3 API and the local disk,
    /// on a fresh three-node cluster.
    #[command(after_help = "Examples:\n  garage-ipfs bench --quick\n  \
        garage-ipfs bench --json results.json\n  \
        garage-ipfs bench --systems connector,s3 --workloads put_1k,get_1k --no-scale")]
    Bench(bench::BenchArgs),
    /// Sustained mixed load (put/get/has/delete over HTTP and gRPC) on a
    /// fresh three-node cluster; every answer and, at the end, every
    /// acknowledged block is checked. Exits 1 on any loss, wrong answer or
    /// memory over the bound.
    #[command(
        after_help = "Examples:\n  garage-ipfs soak --clients 32 --seconds 60\n  \
        garage-ipfs soak --clients 32 --seconds 3600 --json soak.json"
    )]
    Soak(soak::SoakArgs),
    /// Fault-injection checker: clients through two daemons and a CLI
    /// connector, admin jobs beside them, kills, pauses, partitions and
    /// skewed clocks from a seed; a history of every operation, checked
    /// for lost writes, resurrections, false absents and stale presents.
    /// Exits 1 on any anomaly.
    #[command(
        after_help = "Examples:\n  garage-ipfs nemesis --seed 1 --seconds 120\n  \
        garage-ipfs nemesis --seconds 3600 --json report.json\n  \
        garage-ipfs nemesis --check /tmp/garage-ipfs-nemesis-1.jsonl"
    )]
    Nemesis(nemesis::NemesisArgs),
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.cmd {
            Command::Dev(args) => dev::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Cluster(cmd) => cluster::run(cmd).await,
            Command::Status { bytes, json } => status::run(&self.target, bytes, json).await,
            Command::Namespace(cmd) => namespace::run(&self.target, cmd).await,
            Command::Block(cmd) => block::run(&self.target, cmd).await,
            Command::Car(cmd) => car::run(&self.target, cmd).await,
            Command::Verify(args) => check::verify(&self.target, args).await,
            Command::Repair(args) => check::repair(&self.target, args).await,
            Command::Gc(args) => check::gc(&self.target, args).await,
            Command::Compact(args) => check::compact(&self.target, args).await,
            Command::Kubo(cmd) => kubo::run(&self.target, cmd).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Soak(args) => soak::run(args).await,
            Command::Nemesis(args) => nemesis::run(args).await,
        }
    }
}

/// The program: parses the arguments, sets up tracing, runs the command
/// on a multi-threaded runtime, prints the error if any. Here rather than
/// in `main.rs` so that the command futures are compiled once, in this
/// crate, not again in the binary's (rustc instantiates an async body
/// where it is polled from).
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Bytes written to a closed stdout (`block get … | head -c 10`):
        // quiet, as for text (`tools::util::write_stdout`). A broken connection is
        // still reported: stdout itself must be the closed pipe.
        Err(e)
            if crate::tools::util::stdout_closed()
                && e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
                }) =>
        {
            std::process::ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr: `info` by default for the daemon (`serve`, `dev`),
/// `warn` for the other commands, more with `-v`. `RUST_LOG` overrides.
pub fn init_tracing(cli: &Cli) {
    let daemon = matches!(cli.cmd, Command::Serve(_) | Command::Dev(_));
    let default = match (cli.verbose, daemon) {
        (0, true) => "garage_ipfs=info,warn",
        (0, false) => "warn",
        (1, _) => "garage_ipfs=debug,info",
        _ => "garage_ipfs=trace,debug",
    };
    // sqlite's pool logs a benign "database is locked" at start-up.
    let default = format!("{default},r2d2=off");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `--dir` of the dev cluster commands.
#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// Cluster directory (node configs, data, logs, PID files).
    #[arg(long, default_value = DEFAULT_DEV_DIR, env = "GARAGE_IPFS_DEV_DIR")]
    pub dir: PathBuf,
}
