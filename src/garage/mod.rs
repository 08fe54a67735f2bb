//! The cluster layer: a roleless `System` peer that joins a Garage 2.5
//! cluster, and the raw operations the store builds on (block transfers,
//! table reads and writes, K2V inserts).
//!
//! Joining follows `docs/DESIGN.md`: probe the layout first and refuse a
//! replication-factor mismatch, keep a stable node key in the state
//! directory, listen so that storage nodes connect back, pull the layout
//! periodically, and give every operation its own deadline.

pub(crate) mod batch;
mod block;
pub mod error;
pub(crate) mod k2v;
mod nodelay;
pub(crate) mod probe;
pub(crate) mod tables;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use garage_block::manager::BlockRpc;
use garage_db as db;
use garage_net::NetworkKey;
use garage_rpc::replication_mode::{ConsistencyMode, ReplicationFactor};
use garage_rpc::system::{ClusterHealthStatus, System};
use garage_rpc::Endpoint;
use garage_table::replication::TableShardedReplication;
use garage_table::Table;
use tokio::sync::watch;

pub use error::Error;
use probe::Probe;
use tables::{BlockRefSchema, K2VCounterSchema, K2VItemSchema, ObjectSchema, VersionSchema};

use crate::config::Config;

/// RPC path of Garage's block manager.
const BLOCK_RPC_PATH: &str = "garage_block/manager.rs/Rpc";

/// How often the connector pulls the layout itself.
pub const LAYOUT_PULL_INTERVAL: Duration = Duration::from_secs(60);

type Sharded<S> = Arc<Table<S, TableShardedReplication>>;

/// A live connection to a Garage cluster.
pub struct Connector {
    /// Garage's membership manager for this peer.
    pub(crate) system: Arc<System>,
    pub(crate) config: Config,
    pub(crate) consistency: ConsistencyMode,
    pub(crate) block_ep: Arc<Endpoint<BlockRpc, ()>>,
    pub(crate) block_ref: Sharded<BlockRefSchema>,
    pub(crate) object: Sharded<ObjectSchema>,
    pub(crate) version: Sharded<VersionSchema>,
    pub(crate) k2v_item: Sharded<K2VItemSchema>,
    pub(crate) k2v_counter: Sharded<K2VCounterSchema>,
    /// Garage's K2V RPC (`k2v.rs`).
    pub(crate) k2v_ep: Arc<Endpoint<k2v::K2VRpc, ()>>,
    /// Group commit of index writes (`k2v.rs`).
    pub(crate) k2v_batch: batch::Batcher<k2v::InsertedItem>,
    /// Group commit of block refs.
    pub(crate) ref_batch: batch::Batcher<garage_model::s3::block_ref_table::BlockRef>,
    /// Cluster calls made, by kind.
    pub(crate) calls: Arc<CallCounters>,
    /// Co-located block files found and not found (`block.rs`).
    pub(crate) colocated: [std::sync::atomic::AtomicU64; 2],
    exit: watch::Sender<bool>,
    _lock: Option<std::fs::File>,
    _db: db::Db,
}

/// Kinds of cluster calls the connector makes, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A block sent to the nodes that store it.
    BlockPut,
    /// A block read from a node.
    BlockGet,
    /// A table read (index entry, refs, anchors, counters, listing page).
    TableRead,
    /// A table write request (a batch of refs, anchors).
    TableWrite,
    /// A K2V write request (a batch of index entries).
    K2vWrite,
}

impl Call {
    /// Every kind, in metric order.
    pub const ALL: [Call; 5] = [
        Call::BlockPut,
        Call::BlockGet,
        Call::TableRead,
        Call::TableWrite,
        Call::K2vWrite,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Call::BlockPut => "block_put",
            Call::BlockGet => "block_get",
            Call::TableRead => "table_read",
            Call::TableWrite => "table_write",
            Call::K2vWrite => "k2v_write",
        }
    }
}

/// The store operation on whose behalf cluster calls are made, for the
/// metrics. Set with [`Op::scope`]; calls outside any scope (the presence
/// filter, verify, repair, gc) count as [`Op::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Block put.
    Put,
    /// Block get.
    Get,
    /// Has or size lookup.
    Has,
    /// Block delete.
    Delete,
    /// Listing.
    List,
    /// Anything else.
    Other,
}

tokio::task_local! {
    static CURRENT_OP: Op;
}

impl Op {
    /// Every operation, in metric order.
    pub const ALL: [Op; 6] = [Op::Put, Op::Get, Op::Has, Op::Delete, Op::List, Op::Other];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Has => "has",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Other => "other",
        }
    }

    /// Runs `fut` with its cluster calls counted under this operation.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        CURRENT_OP.scope(self, fut).await
    }

    /// Runs `f` with its cluster calls counted under this operation.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT_OP.sync_scope(self, f)
    }

    /// The operation of the running task.
    pub fn current() -> Op {
        CURRENT_OP.try_with(|o| *o).unwrap_or(Op::Other)
    }
}

/// How many cluster calls of each kind the connector made, per store
/// operation. A call is one request of ours; Garage fans it out to the
/// nodes holding the data.
#[derive(Debug, Default)]
pub struct CallCounters([[AtomicU64; 5]; 6]);

impl CallCounters {
    /// Counts one call, under the running task's operation.
    pub fn add(&self, call: Call) {
        self.0[Op::current() as usize][call as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls of one kind made for one operation so far.
    pub fn get(&self, op: Op, call: Call) -> u64 {
        self.0[op as usize][call as usize].load(Ordering::Relaxed)
    }

    /// Calls of every kind made for one operation so far.
    pub fn for_op(&self, op: Op) -> u64 {
        Call::ALL.iter().map(|c| self.get(op, *c)).sum()
    }

    /// All calls so far.
    pub fn total(&self) -> u64 {
        Op::ALL
            .iter()
            .flat_map(|o| Call::ALL.iter().map(|c| self.get(*o, *c)))
            .sum()
    }
}

/// One-time process set-up Garage needs: libsodium and the version string.
pub(crate) fn init_process() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        sodiumoxide::init().expect("libsodium initialisation failed");
        // Garage's status messages carry this string (`garage status` shows
        // it in the Version column); System::new panics without it.
        garage_util::version::init_version(concat!("garage-ipfs-", env!("CARGO_PKG_VERSION")));
    });
}

/// How the connector takes part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A listening peer: storage nodes connect back and push layout
    /// changes, and a background task pulls the layout every minute. For
    /// long-running processes: the daemon, `dev`, the tests.
    Peer,
    /// A short-lived client, like the `garage` CLI: connects out, never
    /// listens nor says hello. Its node key lives in `state_dir/cli`, apart
    /// from the daemon's, so admin commands run beside a daemon that uses
    /// the same config; one client at a time per state directory (a lock).
    Client,
}

impl Connector {
    /// Joins the cluster described by `config` as a listening peer and
    /// waits until a quorum of storage nodes is connected.
    pub async fn connect(config: Config) -> Result<Arc<Self>, Error> {
        Self::connect_as(config, Role::Peer).await
    }

    /// Joins the cluster in the given role.
    #[tracing::instrument(skip_all, fields(peers = config.bootstrap_peers.len(), ?role))]
    pub async fn connect_as(config: Config, role: Role) -> Result<Arc<Self>, Error> {
        init_process();
        let secret = config
            .resolve_secret()
            .map_err(|e| Error::State(e.to_string()))?;
        let network_key = NetworkKey::from_slice(&secret).expect("32-byte key");
        let peers = probe::parse_peers(&config.bootstrap_peers)?;
        let limit = config.timeouts.connect();

        // 1. Learn the layout over a side channel; refuse a mismatch before
        //    our System ever advertises a replication factor.
        let attempts = peers.iter().map(|p| p.addrs.len()).sum::<usize>().max(1) as u32;
        let probe = Probe::new(network_key.clone(), peers);
        let layout = probe
            .rpc_pull_layout((limit / attempts).max(Duration::from_secs(1)))
            .await?;
        probe::check_layout(&layout, config.replication_factor)?;

        // 2. Start our System and its client-side tables.
        let state = match role {
            Role::Peer => config.state_dir.clone(),
            Role::Client => config.state_dir.join("cli"),
        };
        let lock = match role {
            Role::Peer => {
                std::net::TcpListener::bind(config.rpc_bind_addr)
                    .map_err(|e| Error::Bind(config.rpc_bind_addr, e))?;
                None
            }
            Role::Client => Some(lock_state_dir(&state, limit).await?),
        };
        let (exit, exit_rx) = watch::channel(false);
        let conn = Arc::new(Self::build(config, &state, network_key, &layout, exit, lock).await?);

        // 3. Connect.
        match role {
            Role::Peer => {
                tokio::spawn(conn.system.clone().run(exit_rx.clone()));
                conn.wait_ready(limit).await?;
                conn.set_nodelay();
                tokio::spawn(nodelay_loop(Arc::downgrade(&conn), exit_rx.clone()));
                tokio::spawn(layout_pull_loop(Arc::downgrade(&conn), probe, exit_rx));
            }
            Role::Client => {
                for peer in probe.rpc_storage_peers(&layout, limit).await? {
                    if let Err(e) = conn.system.connect(&peer).await {
                        tracing::debug!(peer, cause = %e, "cannot connect to a storage node");
                    }
                }
                conn.wait_ready(limit).await?;
                conn.set_nodelay();
            }
        }
        tracing::info!(
            node = %hex::encode(&conn.system.id.as_slice()[..8]),
            layout = conn.layout_version(),
            "joined the cluster"
        );
        Ok(conn)
    }

    async fn build(
        config: Config,
        state: &Path,
        network_key: NetworkKey,
        layout: &garage_rpc::layout::LayoutHistory,
        exit: watch::Sender<bool>,
        lock: Option<std::fs::File>,
    ) -> Result<Self, Error> {
        let consistency = ConsistencyMode::parse(&config.consistency_mode).ok_or_else(|| {
            Error::State(format!("bad consistency_mode {}", config.consistency_mode))
        })?;
        let garage_config = garage_config(&config, state)?;
        let rf = ReplicationFactor::new(config.replication_factor).expect("validated");
        let system = System::new(network_key, rf, consistency, &garage_config)
            .map_err(|e| Error::State(e.to_string()))?;
        system.layout_manager.update_cluster_layout(layout).await?;

        let db_path = garage_config.metadata_dir.join("db.sqlite");
        let db = db::open_db(&db_path, db::Engine::Sqlite, &db::OpenOpt::default())
            .map_err(|e| Error::State(format!("{}: {e}", db_path.display())))?;
        let replication = TableShardedReplication {
            layout_manager: system.layout_manager.clone(),
            consistency_mode: consistency,
        };
        let block_ref = Table::new(BlockRefSchema, replication.clone(), system.clone(), &db);
        let k2v_item = Table::new(K2VItemSchema, replication.clone(), system.clone(), &db);
        let k2v_ep = system.netapp.endpoint(k2v::K2V_RPC_PATH.into());
        let calls = Arc::new(CallCounters::default());
        let limit = config.timeouts.rpc();
        Ok(Self {
            k2v_batch: k2v::index_batcher(
                system.clone(),
                k2v_item.clone(),
                k2v_ep.clone(),
                calls.clone(),
                limit,
            ),
            k2v_ep,
            ref_batch: ref_batcher(block_ref.clone(), calls.clone(), limit),
            calls,
            colocated: Default::default(),
            block_ref,
            object: Table::new(ObjectSchema, replication.clone(), system.clone(), &db),
            version: Table::new(VersionSchema, replication.clone(), system.clone(), &db),
            k2v_item,
            k2v_counter: Table::new(K2VCounterSchema, replication, system.clone(), &db),
            block_ep: system.netapp.endpoint(BLOCK_RPC_PATH.into()),
            system,
            config,
            consistency,
            exit,
            _lock: lock,
            _db: db,
        })
    }

    async fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        let start = tokio::time::Instant::now();
        // Quorum is enough to work; all nodes is better, so give them a
        // moment more before settling for a degraded start.
        let mut quorum_since = None;
        loop {
            let health = self.system.health();
            match health.status {
                ClusterHealthStatus::Healthy => return Ok(()),
                ClusterHealthStatus::Degraded => {
                    let since = *quorum_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(3) {
                        tracing::warn!(
                            up = health.storage_nodes_ok,
                            of = health.storage_nodes,
                            "joined a degraded cluster"
                        );
                        return Ok(());
                    }
                }
                ClusterHealthStatus::Unavailable => quorum_since = None,
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout(
                    Some(limit),
                    "waiting for a quorum of storage nodes to connect",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The current layout version.
    pub fn layout_version(&self) -> u64 {
        self.system
            .cluster_layout()
            .current()
            .map(|l| l.version)
            .unwrap_or(0)
    }

    /// Layout versions in use: one once the cluster has finished moving
    /// data to the current layout, more while it moves.
    pub fn layout_versions_in_use(&self) -> usize {
        self.system
            .cluster_layout()
            .versions()
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// Storage nodes this connector sees up, as Garage's health counts them.
    pub fn storage_nodes_up(&self) -> usize {
        self.system.health().storage_nodes_ok
    }

    /// Write quorum of the current layout.
    pub fn write_quorum(&self) -> Result<usize, Error> {
        Ok(self
            .system
            .cluster_layout()
            .current()?
            .write_quorum(self.consistency))
    }

    /// Cluster calls this connector made so far, of every kind.
    pub fn cluster_calls(&self) -> u64 {
        self.calls.total()
    }

    /// Block reads from a co-located node's files: (found, not found).
    /// Found files are then checked against the CID by the store.
    pub fn colocated_reads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.colocated[0].load(Relaxed),
            self.colocated[1].load(Relaxed),
        )
    }

    /// Cluster calls this connector made so far, by kind.
    pub fn call_counters(&self) -> &CallCounters {
        &self.calls
    }

    /// Writes a block ref (a CRDT row: idempotent), sharing the request
    /// with concurrent ref writes. Returns once it is on a write quorum.
    pub(crate) async fn rpc_write_block_ref(
        &self,
        r: garage_model::s3::block_ref_table::BlockRef,
    ) -> Result<(), Error> {
        self.ref_batch.submit(r, 80).await
    }

    /// The connector's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the peer's background tasks. Operations in flight may fail.
    pub fn shutdown(&self) {
        let _ = self.exit.send(true);
    }

    /// Sets `TCP_NODELAY` on this connector's sockets to storage nodes
    /// that lack it (`nodelay.rs`).
    fn set_nodelay(&self) {
        let peers = self
            .system
            .get_known_nodes()
            .into_iter()
            .filter_map(|n| n.addr)
            .collect();
        let port = Some(self.config.rpc_bind_addr.port()).filter(|p| *p != 0);
        let set = nodelay::set_on_cluster_sockets(&peers, port);
        if set > 0 {
            tracing::debug!(
                sockets = set,
                "TCP_NODELAY set on connections to storage nodes"
            );
        }
    }
}

/// How often the connector looks for new sockets to storage nodes.
const NODELAY_INTERVAL: Duration = Duration::from_secs(1);

async fn nodelay_loop(conn: std::sync::Weak<Connector>, mut exit: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODELAY_INTERVAL) => (),
            _ = exit.changed() => return,
        }
        match conn.upgrade() {
            Some(conn) => conn.set_nodelay(),
            None => return,
        }
    }
}

/// Writes at most this many rows or items per group-commit request.
pub(crate) const BATCH_LIMITS: batch::BatchLimits = batch::BatchLimits {
    max_items: 128,
    max_bytes: 512 * 1024,
    in_flight: 4,
    queue: 4096,
};

fn ref_batcher(
    table: Sharded<BlockRefSchema>,
    calls: Arc<CallCounters>,
    limit: Duration,
) -> batch::Batcher<garage_model::s3::block_ref_table::BlockRef> {
    batch::Batcher::spawn(BATCH_LIMITS, move |refs| {
        let table = table.clone();
        calls.add(Call::TableWrite);
        async move { error::deadline(limit, "writing block refs", table.insert_many(refs)).await }
    })
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.exit.send(true);
    }
}

/// Takes the client lock of a state directory, waiting up to `limit`.
async fn lock_state_dir(state: &Path, limit: Duration) -> Result<std::fs::File, Error> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(state)
        .map_err(|e| Error::State(format!("cannot create {}: {e}", state.display())))?;
    let path = state.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
    let start = tokio::time::Instant::now();
    // SAFETY: flock on a file descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if start.elapsed() > limit {
            return Err(Error::State(format!(
                "another garage-ipfs command holds {} (waited {limit:?})",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(file)
}

/// The Garage `Config` our `System` needs, under `state`.
fn garage_config(config: &Config, state: &Path) -> Result<garage_util::config::Config, Error> {
    let meta = state.join("meta");
    let data = state.join("data");
    for dir in [&meta, &data] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::State(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Built as TOML values, not text: `toml` does the quoting of paths
    // and peers (Rust's `{:?}` escaping is not TOML's), as for the
    // connector configs the harness writes.
    let int = |n: u64, key: &str| {
        i64::try_from(n).map_err(|_| Error::State(format!("{key} = {n} does not fit in TOML")))
    };
    let mut t = toml::Table::new();
    t.insert("metadata_dir".into(), path_str(&meta)?.into());
    t.insert("data_dir".into(), path_str(&data)?.into());
    t.insert("db_engine".into(), "sqlite".into());
    t.insert(
        "replication_factor".into(),
        int(config.replication_factor as u64, "replication_factor")?.into(),
    );
    t.insert(
        "consistency_mode".into(),
        config.consistency_mode.clone().into(),
    );
    t.insert(
        "rpc_bind_addr".into(),
        config.rpc_bind_addr.to_string().into(),
    );
    t.insert(
        "rpc_public_addr".into(),
        config.public_addr().to_string().into(),
    );
    t.insert(
        "rpc_timeout_msec".into(),
        int(config.timeouts.rpc_ms, "rpc_timeout_msec")?.into(),
    );
    t.insert(
        "bootstrap_peers".into(),
        config.bootstrap_peers.clone().into(),
    );
    let mut s3 = toml::Table::new();
    s3.insert("s3_region".into(), "garage".into());
    t.insert("s3_api".into(), s3.into());
    toml::Value::Table(t)
        .try_into()
        .map_err(|e| Error::State(format!("internal Garage config: {e}")))
}

fn path_str(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::State(format!("state_dir {} is not UTF-8", p.display())))
}

async fn layout_pull_loop(
    conn: std::sync::Weak<Connector>,
    probe: Probe,
    mut exit: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LAYOUT_PULL_INTERVAL) => (),
            _ = exit.changed() => return,
        }
        let Some(conn) = conn.upgrade() else { return };
        let limit = conn.config.timeouts.rpc();
        match probe.rpc_pull_layout(limit).await {
            Ok(layout) if probe::check_layout(&layout, conn.config.replication_factor).is_ok() => {
                if let Err(e) = conn
                    .system
                    .layout_manager
                    .update_cluster_layout(&layout)
                    .await
                {
                    tracing::warn!(cause = %e, "could not merge the pulled layout");
                }
            }
            Ok(layout) => tracing::error!(
                cluster_rf = layout.current().replication_factor,
                "the cluster's layout changed replication factor; not merging it"
            ),
            Err(e) => tracing::warn!(cause = %e, "periodic layout pull failed"),
        }
    }
}
