//! A local Garage cluster of three real `garage` server processes on
//! 127.0.0.1, replication factor 3, one zone per node: the dev cluster of
//! `garage-ipfs cluster up` and `garage-ipfs dev`, and the integration
//! tests' cluster. The same code serves both.
//!
//! Node configs come from `cluster-config/` (compiled in), rendered into
//! the cluster directory with absolute paths and, for tests, free ports.
//! Node keys are generated here before the first start, so every node's
//! config can name the others as `bootstrap_peers` and the nodes connect
//! by themselves.
//!
//! For partition tests, [`Network::Namespaces`] puts each node in a network
//! namespace of its own on a private bridge ([`netns`]), where links can be
//! cut and healed; everything else works the same.

mod binary;
mod disk;
pub mod kubo;
pub mod netns;
pub mod process;

pub use disk::ClusterDisk;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use binary::{binary_version, garage_binary, GARAGE_VERSION};
pub use netns::{NetLab, Peer};

use crate::config::Config;
use crate::garage::probe::{parse_peers, Probe};

/// The node configs, as shipped in `cluster-config/`.
pub const NODE_CONFIGS: [&str; 3] = [
    include_str!("../../cluster-config/node1.toml"),
    include_str!("../../cluster-config/node2.toml"),
    include_str!("../../cluster-config/node3.toml"),
];

/// RPC port of the dev cluster's connector.
pub const DEV_CONNECTOR_PORT: u16 = 3931;

/// How long a node may take to open its RPC port, and the cluster to
/// become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The garage binary is missing, of the wrong version, or failed.
    #[error("garage: {0}")]
    Garage(String),
    /// A file of the cluster directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `garage` CLI command failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// A kubo binary, repo or daemon.
    #[error("kubo: {0}")]
    Kubo(String),
    /// The cluster did not come up in time.
    #[error("{0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which ports the nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Those in `cluster-config/` (3900…3923).
    Configured,
    /// Free ports picked now, so clusters never collide (tests).
    Free,
}

/// Whether nodes outlive this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Own session and PID files: `cluster down` stops them.
    Detached,
    /// Killed when this process ends, even on panic (tests).
    Attached,
}

/// Where the nodes talk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// All on 127.0.0.1.
    #[default]
    Loopback,
    /// Each node in a network namespace of its own, joined by a bridge,
    /// so that tests can cut links ([`NetLab`]). Needs root and `ip`;
    /// only with free ports and attached nodes.
    Namespaces,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The cluster directory.
    pub dir: PathBuf,
    /// Ports.
    pub ports: Ports,
    /// Lifetime.
    pub lifetime: Lifetime,
    /// Run the nodes with our TCP_NODELAY preload shim (`nodelay.c`),
    /// compiled into the cluster directory with the system C compiler.
    pub nodelay: bool,
    /// The nodes' network.
    pub network: Network,
    /// The nodes' metadata engine: `None` keeps what a node's metadata
    /// directory already holds, else Garage's default (LMDB).
    pub db_engine: Option<DbEngine>,
    /// Log table syncs (`garage_table::sync` at debug level), so that a
    /// completed full sync can be seen in a node's log
    /// ([`Cluster::full_syncs_completed`]). A line per partition and table
    /// at every full sync: for test clusters.
    pub log_table_sync: bool,
}

/// A node's metadata database engine (`db_engine`).
///
/// A node keeps the engine its metadata directory was made with: started
/// with the other one, Garage would open an empty database beside the
/// full one and serve as if it had lost every table, so the harness
/// refuses that instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbEngine {
    /// Garage's default.
    #[default]
    Lmdb,
    /// SQLite (one global write lock, `synchronous=OFF` in Garage).
    Sqlite,
}

impl DbEngine {
    /// The name in Garage's config.
    pub fn name(self) -> &'static str {
        match self {
            DbEngine::Lmdb => "lmdb",
            DbEngine::Sqlite => "sqlite",
        }
    }

    /// The engine whose database a metadata directory holds, if any.
    pub fn on_disk(meta_dir: &Path) -> Option<Self> {
        [DbEngine::Lmdb, DbEngine::Sqlite]
            .into_iter()
            .find(|e| meta_dir.join(format!("db.{}", e.name())).exists())
    }
}

impl std::fmt::Display for DbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DbEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lmdb" => Ok(DbEngine::Lmdb),
            "sqlite" => Ok(DbEngine::Sqlite),
            other => Err(format!(
                "unknown metadata engine {other:?} (lmdb or sqlite)"
            )),
        }
    }
}

/// The preload shim's file name in a cluster directory; nodes started
/// while it exists run with it.
pub const NODELAY_SHIM: &str = "libgarage-ipfs-nodelay.so";

/// The shim's source, shipped inside the binary.
pub const NODELAY_SHIM_SOURCE: &str = include_str!("nodelay.c");

/// Compiles the TCP_NODELAY shim to `out` with the system C compiler
/// (`$CC`, else `cc`).
pub fn build_nodelay_shim(out: &Path) -> Result<(), HarnessError> {
    let src = out.with_extension("c");
    std::fs::write(&src, NODELAY_SHIM_SOURCE).map_err(io_err(&src))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // Build beside and rename: running nodes may have the old file mapped.
    let tmp = out.with_extension("so.tmp");
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            HarnessError::Other(format!(
                "cannot run the C compiler {cc:?} to build the TCP_NODELAY shim ({e}); \
                 install one or start the cluster with --no-nodelay"
            ))
        })?;
    if !status.success() {
        return Err(HarnessError::Other(format!(
            "{cc} failed to build the TCP_NODELAY shim {} ({status})",
            out.display()
        )));
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(())
}

/// One storage node.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1, 2 or 3.
    pub index: usize,
    /// Full node id, hex.
    pub id: String,
    /// RPC address.
    pub rpc: SocketAddr,
    /// S3 API address.
    pub s3: SocketAddr,
    /// Admin API address (metrics).
    pub admin: SocketAddr,
    /// Rendered config file.
    pub config: PathBuf,
    /// Metadata directory.
    pub meta_dir: PathBuf,
    /// Data directory (block files).
    pub data_dir: PathBuf,
    /// Metadata engine.
    pub db_engine: DbEngine,
}

impl Node {
    /// `<id>@<rpc address>`, as `bootstrap_peers` and `garage -h` take it.
    pub fn peer(&self) -> String {
        format!("{}@{}", self.id, self.rpc)
    }

    fn pid_file(&self) -> PathBuf {
        self.config.with_extension("pid")
    }

    fn log_file(&self) -> PathBuf {
        self.config.with_extension("log")
    }

    /// Where Garage keeps a plain block on this node.
    pub fn block_path(&self, hash: &[u8]) -> PathBuf {
        let hex = hex::encode(hash);
        self.data_dir.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }
}

/// A node started by [`Cluster::start_extra_node`]; killed on drop.
pub struct ExtraNode {
    /// The node.
    pub node: Node,
    child: Child,
}

impl ExtraNode {
    /// Runs `garage -c <this node's config> ARGS` through the cluster's binary.
    pub fn garage_cli(&self, cluster: &Cluster, args: &[&str]) -> Result<String, HarnessError> {
        cluster.garage_cli_with(&self.node.config, args)
    }
}

impl Drop for ExtraNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.node.pid_file());
    }
}

/// A local three-node cluster.
pub struct Cluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// The garage binary.
    pub garage: PathBuf,
    /// The nodes, in order.
    pub nodes: Vec<Node>,
    /// The cluster's rpc_secret, hex.
    pub rpc_secret: String,
    lifetime: Lifetime,
    log_table_sync: bool,
    children: Mutex<Vec<Option<Child>>>,
    // Dropped after the nodes are stopped (`Drop` runs first).
    lab: Option<NetLab>,
}

impl Cluster {
    /// Renders the configs, starts the nodes, applies a layout over three
    /// zones if the cluster has none, and waits until it is healthy.
    pub async fn start(opts: StartOptions) -> Result<Arc<Self>, HarnessError> {
        crate::garage::init_process();
        let garage = garage_binary()?;
        std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
        let dir = opts.dir.canonicalize().map_err(io_err(&opts.dir))?;
        let lab = match opts.network {
            Network::Loopback => None,
            Network::Namespaces => {
                if opts.ports != Ports::Free || opts.lifetime != Lifetime::Attached {
                    return Err(HarnessError::Other(
                        "namespaced nodes need free ports and an attached lifetime".into(),
                    ));
                }
                let lab = NetLab::create()?;
                for index in 1..=NODE_CONFIGS.len() {
                    lab.add_node(index)?;
                }
                Some(lab)
            }
        };
        let (nodes, rpc_secret) = render_configs(&dir, opts.ports, lab.as_ref(), opts.db_engine)?;
        let shim = dir.join(NODELAY_SHIM);
        if opts.nodelay {
            build_nodelay_shim(&shim)?;
        } else if shim.exists() {
            std::fs::remove_file(&shim).map_err(io_err(&shim))?;
        }
        let cluster = Arc::new(Self {
            dir,
            garage,
            nodes,
            rpc_secret,
            lifetime: opts.lifetime,
            log_table_sync: opts.log_table_sync,
            children: Mutex::new(vec![None, None, None]),
            lab,
        });
        for i in 0..cluster.nodes.len() {
            if cluster.node_pid(i).is_none() {
                cluster.start_node(i)?;
            }
        }
        cluster.wait_rpc_ports(&[0, 1, 2]).await?;
        cluster.ensure_layout().await?;
        cluster.wait_healthy(START_TIMEOUT).await?;
        cluster.write_connector_config()?;
        Ok(cluster)
    }

    /// Starts a cluster of a command's own (bench, soak, kubo bench) in
    /// `dir`, on free ports, its nodes attached to this process: they stop
    /// when it exits, even if it panics.
    pub async fn start_own(
        dir: &Path,
        nodelay: bool,
        db_engine: Option<DbEngine>,
    ) -> Result<Arc<Self>, HarnessError> {
        Self::start(StartOptions {
            dir: dir.to_owned(),
            ports: Ports::Free,
            lifetime: Lifetime::Attached,
            nodelay,
            network: Network::Loopback,
            db_engine,
            log_table_sync: false,
        })
        .await
    }

    /// Refuses a cluster directory whose nodes are running: starting it
    /// again would re-render their configs with other ports under them.
    pub fn refuse_running(dir: &Path) -> Result<(), HarnessError> {
        if let Ok(existing) = Self::open(dir) {
            if (0..existing.nodes.len()).any(|i| existing.node_pid(i).is_some()) {
                return Err(HarnessError::Other(format!(
                    "garage nodes are running in {}; stop them first (garage-ipfs cluster down --dir {})",
                    dir.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// A cluster started earlier in `dir` (for `cluster down` and `status`).
    pub fn open(dir: &Path) -> Result<Self, HarnessError> {
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        let mut nodes = Vec::new();
        let mut rpc_secret = String::new();
        for index in 1..=3 {
            let path = dir.join(format!("node{index}.toml"));
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| HarnessError::Other(format!("{}: {e}", path.display())))?;
            rpc_secret = str_at(&table, &["rpc_secret"])?.to_string();
            nodes.push(node_from_table(index, &path, &table)?);
        }
        Ok(Self {
            garage: garage_binary()?,
            dir,
            nodes,
            rpc_secret,
            lifetime: Lifetime::Detached,
            log_table_sync: false,
            children: Mutex::new(vec![None, None, None]),
            lab: None,
        })
    }

    /// Starts node `i` (0-based) again, with its existing data.
    pub fn start_node(&self, i: usize) -> Result<(), HarnessError> {
        let child = self.spawn_node(&self.nodes[i])?;
        self.children.lock().unwrap()[i] = Some(child);
        Ok(())
    }

    /// How many full syncs of `table` node `i` has logged as completed
    /// (counted only with [`StartOptions::log_table_sync`]; 0 otherwise).
    pub fn full_syncs_completed(&self, i: usize, table: &str) -> usize {
        let line = format!("{table}: Completed full sync");
        std::fs::read_to_string(self.nodes[i].log_file())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&line))
            .count()
    }

    /// Starts a node process (with the shim if built) and writes its PID file.
    fn spawn_node(&self, node: &Node) -> Result<Child, HarnessError> {
        let log_path = node.log_file();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let mut cmd = match &self.lab {
            Some(lab) => lab.command(node.index, &self.garage),
            None => Command::new(&self.garage),
        };
        cmd.arg("-c").arg(&node.config).arg("server").env(
            "RUST_LOG",
            if self.log_table_sync {
                "garage=info,garage_net=warn,garage_rpc=warn,garage_table::sync=debug"
            } else {
                "garage=info,garage_net=warn,garage_rpc=warn"
            },
        );
        let shim = self.dir.join(NODELAY_SHIM);
        if shim.exists() {
            cmd.env("LD_PRELOAD", &shim);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err(&log_path))?)
            .stderr(log);
        let child = match self.lifetime {
            Lifetime::Attached => process::spawn_attached(cmd),
            Lifetime::Detached => process::spawn_detached(cmd),
        }
        .map_err(|e| {
            HarnessError::Garage(format!("cannot start {}: {e}", self.garage.display()))
        })?;
        let pid_file = node.pid_file();
        std::fs::write(&pid_file, child.id().to_string()).map_err(io_err(&pid_file))?;
        Ok(child)
    }

    /// Starts a node beside the cluster's three, numbered `index` (4 and
    /// up), with free ports and the cluster's secret, bootstrapped to the
    /// three. It is in no layout until one assigns it. For layout-change
    /// tests: the node is killed when the returned handle drops.
    pub async fn start_extra_node(&self, index: usize) -> Result<ExtraNode, HarnessError> {
        let host = match &self.lab {
            Some(lab) => lab.add_node(index)?,
            None => LOCALHOST,
        };
        let engine = Some(self.nodes[0].db_engine);
        let (node, mut table) =
            render_node(&self.dir, index, NODE_CONFIGS[0], Ports::Free, host, engine)?;
        let peers = self.peers().into_iter().map(toml::Value::String).collect();
        table.insert("bootstrap_peers".into(), toml::Value::Array(peers));
        let text = toml::to_string(&table).expect("serializable");
        std::fs::write(&node.config, text).map_err(io_err(&node.config))?;
        let child = self.spawn_node(&node)?;
        let extra = ExtraNode { node, child };
        let start = Instant::now();
        while TcpStream::connect_timeout(&extra.node.rpc, Duration::from_millis(200)).is_err() {
            if start.elapsed() > START_TIMEOUT {
                return Err(HarnessError::Timeout(format!(
                    "node{index} did not open {} within {START_TIMEOUT:?}; see {}",
                    extra.node.rpc,
                    extra.node.log_file().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(extra)
    }

    /// The PID of node `i` if it runs.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        let node = &self.nodes[i];
        let pid: u32 = std::fs::read_to_string(node.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process::is_our_process(pid, &node.config).then_some(pid)
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill_node(&self, i: usize) {
        if let Some(pid) = self.node_pid(i) {
            let _ = process::signal(pid, libc::SIGKILL);
        }
        if let Some(mut child) = self.children.lock().unwrap()[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.nodes[i].pid_file());
    }

    /// Restarts the given nodes (0-based), with their data, and waits until
    /// the cluster is healthy again.
    pub async fn restart_nodes(&self, which: &[usize]) -> Result<(), HarnessError> {
        for &i in which {
            self.kill_node(i);
            self.start_node(i)?;
        }
        self.wait_rpc_ports(which).await?;
        self.wait_healthy(START_TIMEOUT).await
    }

    /// Stops every node: SIGTERM, then SIGKILL after 10 s. Returns how many
    /// were running.
    pub fn stop(&self) -> usize {
        let mut stopped = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(pid) = self.node_pid(i) {
                if process::stop_pid(pid, &node.config, Duration::from_secs(10)) {
                    stopped += 1;
                }
            }
            if let Some(mut child) = self.children.lock().unwrap()[i].take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(node.pid_file());
        }
        stopped
    }

    /// Runs `garage -c <node i config> ARGS` and returns its output,
    /// or an error carrying stdout and stderr if it failed.
    pub fn garage_cli(&self, i: usize, args: &[&str]) -> Result<String, HarnessError> {
        self.garage_cli_with(&self.nodes[i].config, args)
    }

    /// Runs `garage -c CONFIG ARGS` (any node's config).
    pub fn garage_cli_with(&self, config: &Path, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new(&self.garage)
            .arg("-c")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                HarnessError::Garage(format!("cannot run {}: {e}", self.garage.display()))
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HarnessError::Command {
                command: format!("garage -c {} {}", config.display(), args.join(" ")),
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    async fn wait_rpc_ports(&self, which: &[usize]) -> Result<(), HarnessError> {
        let start = Instant::now();
        for &i in which {
            let node = &self.nodes[i];
            while TcpStream::connect_timeout(&node.rpc, Duration::from_millis(200)).is_err() {
                if self.node_pid(i).is_none() {
                    return Err(HarnessError::Garage(format!(
                        "node{} exited during start; see {}",
                        node.index,
                        node.log_file().display()
                    )));
                }
                if start.elapsed() > START_TIMEOUT {
                    return Err(HarnessError::Timeout(format!(
                        "node{} did not open {} within {START_TIMEOUT:?}; see {}",
                        node.index,
                        node.rpc,
                        node.log_file().display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The current layout version, as a node reports it.
    pub async fn layout_version(&self) -> Result<u64, HarnessError> {
        let secret = crate::config::parse_secret(&self.rpc_secret)
            .map_err(|e| HarnessError::Other(e.to_string()))?;
        let peers = parse_peers(&self.peers()).map_err(|e| HarnessError::Other(e.to_string()))?;
        let probe = Probe::new(
            garage_net::NetworkKey::from_slice(&secret).expect("32 bytes"),
            peers,
        );
        let layout = probe
            .rpc_pull_layout(Duration::from_secs(5))
            .await
            .map_err(|e| HarnessError::Other(e.to_string()))?;
        Ok(layout.current().version)
    }

    async fn ensure_layout(&self) -> Result<(), HarnessError> {
        if self.layout_version().await? > 0 {
            return Ok(());
        }
        for node in &self.nodes {
            let zone = format!("dc{}", node.index);
            self.garage_cli(0, &["layout", "assign", "-z", &zone, "-c", "1G", &node.id])?;
        }
        self.garage_cli(0, &["layout", "apply", "--version", "1"])?;
        Ok(())
    }

    /// Waits until every running node reports the cluster healthy.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let mut all = true;
            for i in 0..self.nodes.len() {
                match self.garage_cli(i, &["health"]) {
                    Ok(out) if out.contains("HEALTHY") => (),
                    Ok(out) => {
                        all = false;
                        last = out;
                    }
                    Err(e) => {
                        all = false;
                        last = e.to_string();
                    }
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(HarnessError::Timeout(format!(
                    "cluster not healthy after {limit:?}; last answer:\n{last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The nodes as `bootstrap_peers` entries.
    pub fn peers(&self) -> Vec<String> {
        self.nodes.iter().map(Node::peer).collect()
    }

    /// The namespaces and links of a [`Network::Namespaces`] cluster.
    pub fn net(&self) -> Option<&NetLab> {
        self.lab.as_ref()
    }

    /// Where a connector of this process binds: the bridge's address for a
    /// namespaced cluster (its nodes connect back to it), else 127.0.0.1.
    pub fn connector_ip(&self) -> IpAddr {
        self.lab.as_ref().map_or(LOCALHOST, NetLab::host_ip)
    }

    /// A connector config for this cluster.
    pub fn connector_config(&self, state_dir: impl Into<PathBuf>, rpc_port: u16) -> Config {
        Config::new(
            state_dir,
            SocketAddr::new(self.connector_ip(), rpc_port),
            self.rpc_secret.clone(),
            self.peers(),
        )
    }

    /// A connector config for this cluster as a TOML table: state in
    /// `state_dir`, the connector's RPC on `rpc_port`, the cluster's
    /// secret and peers, replication factor 3. Callers add what they need
    /// (an `[api]` table, `rpc_secret_file` in place of `rpc_secret`) and
    /// render it with `toml::to_string`, which does the quoting.
    pub fn connector_toml(&self, state_dir: &Path, rpc_port: u16) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("state_dir".into(), state_dir.display().to_string().into());
        t.insert(
            "rpc_bind_addr".into(),
            SocketAddr::new(self.connector_ip(), rpc_port)
                .to_string()
                .into(),
        );
        t.insert("rpc_secret".into(), self.rpc_secret.clone().into());
        t.insert(
            "bootstrap_peers".into(),
            toml::Value::Array(self.peers().into_iter().map(Into::into).collect()),
        );
        t.insert("replication_factor".into(), 3.into());
        t.insert("consistency_mode".into(), "consistent".into());
        t
    }

    /// A connector and daemon config (TOML text) for this cluster: as
    /// [`Cluster::connector_toml`], plus the gateway, kubo RPC and gRPC on
    /// the `api` ports of 127.0.0.1, serving `namespace`, with `extra_api`
    /// in `[api]`.
    pub fn daemon_config(
        &self,
        state_dir: &Path,
        rpc_port: u16,
        api: [u16; 3],
        namespace: &str,
        extra_api: &[(&str, toml::Value)],
    ) -> String {
        let mut t = self.connector_toml(state_dir, rpc_port);
        let mut a = toml::Table::new();
        a.insert("namespace".into(), namespace.into());
        for (key, port) in ["gateway_addr", "rpc_addr", "grpc_addr"].iter().zip(api) {
            a.insert((*key).into(), format!("127.0.0.1:{port}").into());
        }
        for (key, value) in extra_api {
            a.insert((*key).into(), value.clone());
        }
        t.insert("api".into(), a.into());
        toml::to_string(&t).expect("a TOML table renders")
    }

    /// Path of the connector config written next to the node configs.
    pub fn connector_config_path(&self) -> PathBuf {
        self.dir.join("connector.toml")
    }

    fn write_connector_config(&self) -> Result<(), HarnessError> {
        let mut t = self.connector_toml(Path::new("connector"), DEV_CONNECTOR_PORT);
        let mut api = toml::Table::new();
        api.insert("allow_anonymous_writes_on_loopback".into(), true.into());
        t.insert("api".into(), api.into());
        let text = format!(
            "# Written by `garage-ipfs cluster up` for the cluster in this directory.\n\
             # [api] allow_anonymous_writes_on_loopback: local development only.\n\n{}",
            toml::to_string(&t).expect("a TOML table renders")
        );
        let path = self.connector_config_path();
        std::fs::write(&path, text).map_err(io_err(&path))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Attached {
            self.stop();
        }
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Renders the node configs into `dir`, generating node keys as needed.
fn render_configs(
    dir: &Path,
    ports: Ports,
    lab: Option<&NetLab>,
    db_engine: Option<DbEngine>,
) -> Result<(Vec<Node>, String), HarnessError> {
    let mut tables = Vec::new();
    let mut nodes = Vec::new();
    for (i, template) in NODE_CONFIGS.iter().enumerate() {
        let host = lab.map_or(LOCALHOST, |lab| lab.node_ip(i + 1));
        let (node, table) = render_node(dir, i + 1, template, ports, host, db_engine)?;
        nodes.push(node);
        tables.push(table);
    }
    let secret = str_at(&tables[0], &["rpc_secret"])?.to_string();
    for (node, mut table) in nodes.iter().zip(tables) {
        let others: Vec<toml::Value> = nodes
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| toml::Value::String(n.peer()))
            .collect();
        table.insert("bootstrap_peers".into(), toml::Value::Array(others));
        let text = toml::to_string(&table).expect("serializable");
        std::fs::write(&node.config, text).map_err(io_err(&node.config))?;
    }
    Ok((nodes, secret))
}

/// Renders one node's config table (not yet written: its bootstrap peers
/// are added by the caller) and creates its directories and key. With free
/// ports, the node listens on `host`.
fn render_node(
    dir: &Path,
    index: usize,
    template: &str,
    ports: Ports,
    host: IpAddr,
    db_engine: Option<DbEngine>,
) -> Result<(Node, toml::Table), HarnessError> {
    let mut table: toml::Table = toml::from_str(template).expect("shipped node config parses");
    let node_dir = dir.join(format!("node{index}"));
    let meta = node_dir.join("meta");
    let data = node_dir.join("data");
    for d in [&meta, &data] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let engine = match (DbEngine::on_disk(&meta), db_engine) {
        (Some(held), Some(wanted)) if held != wanted => {
            return Err(HarnessError::Other(format!(
                "node{index}'s metadata in {} is in {held}, not {wanted}: keep {held} for this \
                 cluster directory, or use a new one",
                meta.display()
            )))
        }
        (Some(held), _) => held,
        (None, wanted) => wanted.unwrap_or_default(),
    };
    set(&mut table, &["db_engine"], engine.name().to_string());
    set(&mut table, &["metadata_dir"], meta.display().to_string());
    set(&mut table, &["data_dir"], data.display().to_string());
    if ports == Ports::Free {
        let [rpc, s3, admin] = [free_port()?, free_port()?, free_port()?];
        let at = |port| SocketAddr::new(host, port).to_string();
        set(&mut table, &["rpc_bind_addr"], at(rpc));
        set(&mut table, &["rpc_public_addr"], at(rpc));
        set(&mut table, &["s3_api", "api_bind_addr"], at(s3));
        set(&mut table, &["admin", "api_bind_addr"], at(admin));
    }
    ensure_node_key(&meta)?;
    let path = dir.join(format!("node{index}.toml"));
    let node = node_from_table(index, &path, &table)?;
    Ok((node, table))
}

fn set(table: &mut toml::Table, path: &[&str], value: String) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("config section is a table");
    }
    t.insert(last.to_string(), toml::Value::String(value));
}

fn str_at<'a>(table: &'a toml::Table, path: &[&str]) -> Result<&'a str, HarnessError> {
    let mut v: Option<&toml::Value> = None;
    let mut t = table;
    for (n, p) in path.iter().enumerate() {
        v = t.get(*p);
        if n + 1 < path.len() {
            t = v.and_then(|v| v.as_table()).ok_or_else(|| missing(path))?;
        }
    }
    v.and_then(|v| v.as_str()).ok_or_else(|| missing(path))
}

fn missing(path: &[&str]) -> HarnessError {
    HarnessError::Other(format!("node config lacks {}", path.join(".")))
}

fn node_from_table(index: usize, path: &Path, table: &toml::Table) -> Result<Node, HarnessError> {
    let addr = |p: &[&str]| -> Result<SocketAddr, HarnessError> {
        str_at(table, p)?
            .parse()
            .map_err(|e| HarnessError::Other(format!("{}: {}: {e}", path.display(), p.join("."))))
    };
    let meta_dir = PathBuf::from(str_at(table, &["metadata_dir"])?);
    let pubkey_path = meta_dir.join("node_key.pub");
    let pubkey = std::fs::read(&pubkey_path).map_err(io_err(&pubkey_path))?;
    Ok(Node {
        index,
        id: hex::encode(pubkey),
        rpc: addr(&["rpc_bind_addr"])?,
        s3: addr(&["s3_api", "api_bind_addr"])?,
        admin: addr(&["admin", "api_bind_addr"])?,
        config: path.to_owned(),
        data_dir: PathBuf::from(str_at(table, &["data_dir"])?),
        db_engine: str_at(table, &["db_engine"])?
            .parse()
            .map_err(|e| HarnessError::Other(format!("{}: {e}", path.display())))?,
        meta_dir,
    })
}

/// Writes a node key pair in Garage's format unless one exists.
fn ensure_node_key(meta: &Path) -> Result<(), HarnessError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key_path = meta.join("node_key");
    if key_path.exists() {
        return Ok(());
    }
    let (pk, sk) = sodiumoxide::crypto::sign::ed25519::gen_keypair();
    let pub_path = meta.join("node_key.pub");
    std::fs::write(&pub_path, pk.as_ref()).map_err(io_err(&pub_path))?;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io_err(&key_path))?;
    std::io::Write::write_all(&mut f, sk.as_ref()).map_err(io_err(&key_path))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err(Path::new("127.0.0.1:0")))?;
    Ok(l.local_addr()
        .map_err(io_err(Path::new("127.0.0.1:0")))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_the_engine_its_metadata_was_made_with() {
        let dir =
            std::env::temp_dir().join(format!("garage-ipfs-engine-{}", rand::random::<u64>()));
        let render = |engine| {
            render_node(
                &dir,
                1,
                NODE_CONFIGS[0],
                Ports::Configured,
                LOCALHOST,
                engine,
            )
            .map(|(node, table)| {
                (
                    node.db_engine,
                    table["db_engine"].as_str().map(String::from),
                )
            })
        };
        // A fresh directory: Garage's default, or what is asked.
        let (engine, rendered) = render(None).unwrap();
        assert_eq!(
            (engine, rendered.as_deref()),
            (DbEngine::Lmdb, Some("lmdb"))
        );
        assert_eq!(render(Some(DbEngine::Sqlite)).unwrap().0, DbEngine::Sqlite);
        // Metadata in sqlite: kept, and a switch refused with the reason.
        std::fs::write(dir.join("node1/meta/db.sqlite"), b"").unwrap();
        assert_eq!(render(None).unwrap().0, DbEngine::Sqlite);
        let err = render(Some(DbEngine::Lmdb)).unwrap_err().to_string();
        assert!(err.contains("is in sqlite, not lmdb"), "{err}");
        assert_eq!("sqlite".parse::<DbEngine>(), Ok(DbEngine::Sqlite));
        assert!("rocksdb".parse::<DbEngine>().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
