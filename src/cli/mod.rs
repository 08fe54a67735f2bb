//! The `garage-ipfs` command line: one file per noun.

mod cluster;
mod dev;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up the local dev cluster (three garage nodes) and run a smoke
    /// test through the store: put, get, list, delete.
    #[command(after_help = "Examples:\n  garage-ipfs dev\n  garage-ipfs dev --dir /tmp/gi-dev")]
    Dev(dev::DevArgs),
    /// Manage the local dev cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.cmd {
            Command::Dev(args) => dev::run(args).await,
            Command::Cluster(cmd) => cluster::run(cmd).await,
        }
    }
}

/// Logs to stderr; `warn` by default for the CLI, more with `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "garage_ipfs=debug,info",
        _ => "garage_ipfs=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
