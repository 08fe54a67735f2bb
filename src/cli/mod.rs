//! The `garage-ipfs` command line: one file per noun.

mod cluster;
mod dev;
mod serve;

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
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.cmd {
            Command::Dev(args) => dev::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Cluster(cmd) => cluster::run(cmd).await,
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
