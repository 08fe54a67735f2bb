//! `garage-ipfs cluster up | down | status`: the local dev cluster.

use crate::tools::util::outln;
use clap::Subcommand;
use serde::Serialize;

use super::DirArg;
use crate::harness::{Cluster, Lifetime, Network, Ports, StartOptions};

/// Dev cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Start three garage nodes on 127.0.0.1 (ports 3900-3923), connect
    /// them, apply a layout over three zones and wait until healthy.
    #[command(after_help = "Example:\n  garage-ipfs cluster up && garage-ipfs cluster status")]
    Up {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        nodelay: NodelayArg,
    },
    /// Stop the nodes started by `cluster up` (by their PIDs).
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show the nodes, their processes and the cluster's health.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Whether the nodes run with the TCP_NODELAY shim.
#[derive(Debug, clap::Args)]
pub struct NodelayArg {
    /// Run the garage nodes stock, without our TCP_NODELAY preload shim
    /// (compiled with the system C compiler into the cluster directory).
    /// Nodes already running keep how they were started.
    #[arg(long)]
    pub no_nodelay: bool,
}

/// Starts (or finds running) the dev cluster in `dir`, detached.
pub(super) async fn up(
    dir: &DirArg,
    nodelay: &NodelayArg,
) -> anyhow::Result<std::sync::Arc<Cluster>> {
    eprintln!("Starting the dev cluster in {} ...", dir.dir.display());
    let cluster = Cluster::start(StartOptions {
        dir: dir.dir.clone(),
        ports: Ports::Configured,
        lifetime: Lifetime::Detached,
        nodelay: !nodelay.no_nodelay,
        network: Network::Loopback,
        db_engine: None,
        log_table_sync: false,
    })
    .await?;
    Ok(cluster)
}

pub(super) async fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Up { dir, nodelay } => {
            let cluster = up(&dir, &nodelay).await?;
            print_nodes(&cluster);
            outln!(
                "Cluster healthy. Connector config: {}",
                cluster.connector_config_path().display()
            );
            Ok(())
        }
        ClusterCmd::Down { dir } => {
            let cluster = Cluster::open(&dir.dir)?;
            let n = cluster.stop();
            outln!("Stopped {n} node(s) of {}.", cluster.dir.display());
            Ok(())
        }
        ClusterCmd::Status { dir, json } => status(&dir, json).await,
    }
}

#[derive(Serialize)]
struct NodeStatus {
    node: usize,
    id: String,
    rpc: String,
    s3: String,
    pid: Option<u32>,
    running: bool,
}

#[derive(Serialize)]
struct Status {
    dir: String,
    nodes: Vec<NodeStatus>,
    healthy: bool,
    layout_version: Option<u64>,
    health: String,
}

fn node_statuses(cluster: &Cluster) -> Vec<NodeStatus> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let pid = cluster.node_pid(i);
            NodeStatus {
                node: n.index,
                id: n.id.clone(),
                rpc: n.rpc.to_string(),
                s3: n.s3.to_string(),
                pid,
                running: pid.is_some(),
            }
        })
        .collect()
}

fn print_nodes(cluster: &Cluster) {
    outln!(
        "{:<6} {:<18} {:<16} {:<16} {:<8} STATE",
        "NODE",
        "ID",
        "RPC",
        "S3",
        "PID"
    );
    for n in node_statuses(cluster) {
        outln!(
            "{:<6} {:<18} {:<16} {:<16} {:<8} {}",
            format!("node{}", n.node),
            &n.id[..16],
            n.rpc,
            n.s3,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if n.running { "running" } else { "stopped" }
        );
    }
}

async fn status(dir: &DirArg, json: bool) -> anyhow::Result<()> {
    let cluster = Cluster::open(&dir.dir)?;
    let nodes = node_statuses(&cluster);
    let running = nodes.iter().position(|n| n.running);
    let health = match running {
        Some(i) => cluster
            .garage_cli(i, &["health"])
            .unwrap_or_else(|e| e.to_string()),
        None => "no node is running (garage-ipfs cluster up)".to_string(),
    };
    let layout_version = match running {
        Some(_) => cluster.layout_version().await.ok(),
        None => None,
    };
    let healthy = running.is_some() && health.contains("HEALTHY");
    if json {
        let s = Status {
            dir: cluster.dir.display().to_string(),
            nodes,
            healthy,
            layout_version,
            health,
        };
        outln!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        outln!("Cluster directory: {}", cluster.dir.display());
        print_nodes(&cluster);
        if let Some(v) = layout_version {
            outln!("Layout version: {v}");
        }
        outln!("{}", health.trim_end());
    }
    if healthy {
        Ok(())
    } else {
        anyhow::bail!("the dev cluster is not healthy")
    }
}
