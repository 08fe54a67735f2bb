//! `garage-ipfs serve`: the daemon.

use std::path::PathBuf;

use crate::tools::daemon::{shutdown_signal, Daemon};

/// Arguments of `garage-ipfs serve`.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Connector and daemon configuration (see cluster-config/connector.toml).
    #[arg(long, short, env = "GARAGE_IPFS_CONFIG")]
    config: PathBuf,
}

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = crate::config::read_config(&args.config)?;
    let daemon = Daemon::start(config).await?;
    let [gw, rpc, grpc] = daemon.listeners.addrs()?;
    tracing::info!(gateway = %gw, rpc = %rpc, grpc = %grpc, namespace = %daemon.options.namespace, "garage-ipfs daemon ready");
    eprintln!("serving: gateway http://{gw}  kubo RPC http://{rpc}/api/v0  gRPC {grpc}");
    daemon.serve(shutdown_signal()).await
}
