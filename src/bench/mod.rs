//! `garage-ipfs bench`: three systems side by side on one three-node
//! cluster, with the same workloads and the same kind of data.
//!
//! - `connector`: this crate's store (`GarageStore::with_filters`,
//!   namespace `bench`) through the [`BlockStore`](crate::store::BlockStore)
//!   trait;
//! - `s3`: go-ds-s3's access pattern through Garage's S3 API on node 1
//!   (PutObject, GetObject, HeadObject, ListObjectsV2 under `blocks/`);
//! - `local`: one file per block on the local disk, one copy: the floor of
//!   writing a block at all.
//!
//! Each workload runs at concurrency 16 and 1, system after system, with
//! an untimed warm-up and a pause before each timed phase. Besides
//! throughput and latency, each phase reads what it cost: requests the
//! client sent, RPCs inside the cluster (the nodes' own Prometheus
//! counters), and CPU time of the three garage processes and of this one.
//! The scale curve then measures puts and gets of small blocks with 10^3,
//! 10^4 and 10^5 blocks already stored, and how long a presence filter
//! takes to build for that many blocks.

pub mod kubo;
mod measure;
pub mod report;
mod systems;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cid::Cid;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use multihash::Multihash;
use rand::{Rng, RngCore, SeedableRng};

use crate::cid::{self as cidutil, codec};
use crate::harness::{self, Cluster, Lifetime, Ports, StartOptions};
use crate::store::GarageStore;
use crate::Connector;

pub use report::{FilterPoint, FilterReport, Metrics, Report, ScalePoint};
pub use systems::{connector_rpc_calls, SystemKind};
use systems::{LocalSystem, S3System, System};

/// The concurrencies every workload runs at, in order.
pub const CONCURRENCY: [usize; 2] = [16, 1];

/// Size of the large blocks (`put_256k`, `get_256k`).
pub const BIG_BLOCK: usize = 256 * 1024;
/// Size of the small blocks (everything else).
pub const SMALL_BLOCK: usize = 1024;
/// Blocks read by `get_hot`, `has_present` and listed by `list`.
pub const HOT_SET: usize = 10_000;
/// Exponent of the Zipf distribution of `get_hot`.
pub const ZIPF_S: f64 = 1.1;
/// Blocks stored before each point of the scale curve.
pub const SCALE_POINTS: [usize; 3] = [1_000, 10_000, 100_000];
/// Timed puts and gets at each point of the scale curve.
pub const SCALE_OPS: (usize, usize) = (2_000, 5_000);
/// Concurrency of the scale curve.
pub const SCALE_CONCURRENCY: usize = 16;
/// Fewest timed ops of a phase, whatever the scale.
const MIN_OPS: usize = 20;
/// Blocks per `put_many` when filling, and batches in flight.
const FILL_BATCH: usize = 256;
const FILL_IN_FLIGHT: usize = 4;
/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;
/// Longest wait for a presence filter's first listing.
const FILTER_READY_LIMIT: Duration = Duration::from_secs(600);

const NAMESPACE: &str = "bench";
const SCALE_NAMESPACE: &str = "bench-scale";
const BUCKET: &str = "bench";
const SCALE_BUCKET: &str = "bench-scale";
const KEY_NAME: &str = "bench-key";

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Puts of new 256 KiB blocks.
    #[value(name = "put_256k")]
    Put256k,
    /// Puts of new 1 KiB blocks.
    #[value(name = "put_1k")]
    Put1k,
    /// Gets of stored 256 KiB blocks, uniformly.
    #[value(name = "get_256k")]
    Get256k,
    /// Gets of stored 1 KiB blocks, uniformly.
    #[value(name = "get_1k")]
    Get1k,
    /// Gets of stored 1 KiB blocks, Zipf-distributed (s = 1.1).
    #[value(name = "get_hot")]
    GetHot,
    /// Lookups (has / get_size) of blocks never stored.
    #[value(name = "has_absent")]
    HasAbsent,
    /// Lookups (has / get_size) of stored blocks.
    #[value(name = "has_present")]
    HasPresent,
    /// Full listings.
    #[value(name = "list")]
    List,
}

impl Workload {
    /// Every workload, in run order.
    pub const ALL: [Workload; 8] = [
        Workload::Put256k,
        Workload::Put1k,
        Workload::Get256k,
        Workload::Get1k,
        Workload::GetHot,
        Workload::HasAbsent,
        Workload::HasPresent,
        Workload::List,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put256k => "put_256k",
            Workload::Put1k => "put_1k",
            Workload::Get256k => "get_256k",
            Workload::Get1k => "get_1k",
            Workload::GetHot => "get_hot",
            Workload::HasAbsent => "has_absent",
            Workload::HasPresent => "has_present",
            Workload::List => "list",
        }
    }

    /// Timed ops at concurrency 16 and 1, before scaling (listings for
    /// `list`, which are not scaled).
    pub fn default_ops(self) -> (usize, usize) {
        match self {
            Workload::Put256k => (1_000, 200),
            Workload::Put1k => (10_000, 1_000),
            Workload::Get256k => (2_000, 400),
            Workload::Get1k => (10_000, 1_000),
            Workload::GetHot => (20_000, 2_000),
            Workload::HasAbsent => (100_000, 10_000),
            Workload::HasPresent => (20_000, 2_000),
            Workload::List => (16, 2),
        }
    }

    /// Whether the workload moves block bytes (MiB/s makes sense).
    fn moves_data(self) -> bool {
        matches!(
            self,
            Workload::Put256k
                | Workload::Put1k
                | Workload::Get256k
                | Workload::Get1k
                | Workload::GetHot
        )
    }
}

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster directory (node data, the local system's files).
    pub dir: PathBuf,
    /// Run the nodes with the TCP_NODELAY preload shim.
    pub nodelay: bool,
    /// Factor on every op count.
    pub ops_scale: f64,
    /// Whether this is a `--quick` run (recorded in the settings).
    pub quick: bool,
    /// Systems, in report order.
    pub systems: Vec<SystemKind>,
    /// Workloads, in run order.
    pub workloads: Vec<Workload>,
    /// Run the scale curve (connector and s3).
    pub scale_curve: bool,
    /// Pause before each timed phase.
    pub pause: Duration,
    /// Print the tables on stderr (stdout carries the JSON).
    pub tables_to_stderr: bool,
}

impl Options {
    fn scaled(&self, n: usize, min: usize) -> usize {
        ((n as f64 * self.ops_scale).round() as usize).max(min)
    }

    /// Timed ops of a workload at a concurrency.
    pub fn ops(&self, w: Workload, concurrency: usize) -> usize {
        let (c16, c1) = w.default_ops();
        let n = if concurrency == 1 { c1 } else { c16 };
        if w == Workload::List {
            n
        } else {
            self.scaled(n, MIN_OPS)
        }
    }

    /// Blocks of the hot set.
    pub fn hot_set(&self) -> usize {
        self.scaled(HOT_SET, 100)
    }

    /// Points of the scale curve.
    pub fn scale_points(&self) -> Vec<usize> {
        let mut points: Vec<usize> = SCALE_POINTS.iter().map(|&n| self.scaled(n, 50)).collect();
        points.dedup();
        points
    }

    fn scale_ops(&self) -> (usize, usize) {
        (
            self.scaled(SCALE_OPS.0, MIN_OPS),
            self.scaled(SCALE_OPS.1, MIN_OPS),
        )
    }
}

/// Untimed ops before a timed phase of `n` ops.
fn warmup(n: usize) -> usize {
    (n / 20).clamp(5, 50)
}

/// What one op did.
struct Done {
    bytes: u64,
    /// Ops it counts for (entries for a listing).
    units: u64,
    /// Latency samples in ms, instead of the op's own duration.
    samples: Option<Vec<f64>>,
}

impl Done {
    fn op(bytes: usize) -> Self {
        Self {
            bytes: bytes as u64,
            units: 1,
            samples: None,
        }
    }
}

type OpFn = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<Done>> + Send + Sync>;

/// What a timed run did.
#[derive(Default)]
struct Run {
    wall: Duration,
    latencies_ms: Vec<f64>,
    bytes: u64,
    units: u64,
}

/// Runs ops `0..n`, `concurrency` at a time, each worker its own task;
/// stops at the first error.
async fn drive(n: usize, concurrency: usize, bar: &ProgressBar, op: OpFn) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.clamp(1, n.max(1)))
        .map(|_| {
            let (op, next, failed, bar) = (op.clone(), next.clone(), failed.clone(), bar.clone());
            tokio::spawn(async move {
                let mut run = Run::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.load(Ordering::Relaxed) {
                        return Ok(run);
                    }
                    let t = Instant::now();
                    match op(i).await {
                        Ok(done) => {
                            match done.samples {
                                Some(samples) => run.latencies_ms.extend(samples),
                                None => run.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
                            }
                            run.bytes += done.bytes;
                            run.units += done.units;
                            bar.inc(1);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = Run::default();
    let mut error = None;
    for worker in workers {
        match worker.await.context("benchmark worker panicked")? {
            Ok(run) => {
                total.latencies_ms.extend(run.latencies_ms);
                total.bytes += run.bytes;
                total.units += run.units;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    total.wall = start.elapsed();
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// `n` blocks of random bytes and their CIDv1 (raw, sha2-256).
async fn random_blocks(n: usize, size: usize) -> anyhow::Result<Vec<(Cid, Bytes)>> {
    tokio::task::spawn_blocking(move || {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| {
                let mut data = vec![0u8; size];
                rng.fill_bytes(&mut data);
                let cid = cidutil::compute(codec::RAW, SHA2_256, &data)?;
                Ok((cid, Bytes::from(data)))
            })
            .collect()
    })
    .await?
}

/// `n` CIDs (raw, sha2-256) of random digests: blocks nobody stored.
fn absent_cids(n: usize) -> Vec<Cid> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let digest: [u8; 32] = rng.random();
            let mh = Multihash::<64>::wrap(SHA2_256, &digest).expect("32-byte digest");
            Cid::new_v1(codec::RAW, mh)
        })
        .collect()
}

/// Indices into a set of `len`, uniformly, the same for every system.
///
/// Successive permutations of the set: no block is read twice before every
/// block was read once, so a cache only helps once a phase outgrows the
/// set (the cold-read workloads measure the cluster, `get_hot` the cache).
fn uniform_picks(seed: u64, n: usize, len: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picks = Vec::with_capacity(n);
    while picks.len() < n && len > 0 {
        let mut round: Vec<usize> = (0..len).collect();
        round.shuffle(&mut rng);
        picks.extend(round.into_iter().take(n - picks.len()));
    }
    picks
}

/// Ranks into a set of `len`, Zipf-distributed: rank 0 is the hottest.
fn zipf_picks(seed: u64, n: usize, len: usize, s: f64) -> anyhow::Result<Vec<usize>> {
    let zipf = rand_distr::Zipf::new(len as f64, s).context("Zipf distribution")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| (rng.sample(zipf) as usize).clamp(1, len) - 1)
        .collect())
}

fn put_op(sys: Arc<System>, blocks: Arc<Vec<(Cid, Bytes)>>, offset: usize) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let (cid, data) = blocks[offset + i].clone();
        async move {
            let len = data.len();
            sys.put(cid, data).await?;
            Ok(Done::op(len))
        }
        .boxed()
    })
}

fn get_op(
    sys: Arc<System>,
    cids: Arc<Vec<Cid>>,
    picks: Arc<Vec<usize>>,
    offset: usize,
    size: usize,
) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let cid = cids[picks[offset + i]];
        async move {
            let data = sys
                .get(&cid)
                .await?
                .with_context(|| format!("{}: stored block {cid} is missing", sys.kind().name()))?;
            anyhow::ensure!(
                data.len() == size,
                "{}: block {cid} read back {} bytes, not {size}",
                sys.kind().name(),
                data.len()
            );
            Ok(Done::op(size))
        }
        .boxed()
    })
}

/// Even ops ask `has`, odd ops `get_size` (bitswap asks both), and check
/// the answer.
fn lookup_op(
    sys: Arc<System>,
    cids: Arc<Vec<Cid>>,
    picks: Option<Arc<Vec<usize>>>,
    offset: usize,
    expect_size: Option<u64>,
) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let cid = match &picks {
            Some(picks) => cids[picks[offset + i]],
            None => cids[offset + i],
        };
        async move {
            let got = if i % 2 == 0 {
                let present = sys.has(&cid).await?;
                (present != expect_size.is_some()).then(|| format!("has = {present}"))
            } else {
                let size = sys.get_size(&cid).await?;
                (size != expect_size).then(|| format!("get_size = {size:?}"))
            };
            if let Some(got) = got {
                anyhow::bail!(
                    "{}: {cid}: {got}, expected size {expect_size:?}",
                    sys.kind().name()
                );
            }
            Ok(Done::op(0))
        }
        .boxed()
    })
}

fn list_op(sys: Arc<System>, at_least: u64) -> OpFn {
    Arc::new(move |_| {
        let sys = sys.clone();
        async move {
            let (count, samples) = sys.list().await?;
            anyhow::ensure!(
                count >= at_least,
                "{}: listed {count} blocks, stored at least {at_least}",
                sys.kind().name()
            );
            Ok(Done {
                bytes: 0,
                units: count,
                samples: Some(samples),
            })
        }
        .boxed()
    })
}

/// Counters read before and after a timed phase.
struct Snapshot {
    node_rpcs: f64,
    node_s3_requests: f64,
    /// CPU seconds of the three garage processes.
    node_cpu: f64,
    /// CPU seconds of this process.
    self_cpu: f64,
    client_requests: Option<u64>,
}

/// Blocks a system holds, by kind.
#[derive(Default)]
struct Stored {
    big: Vec<Cid>,
    small: Vec<Cid>,
    hot: Vec<Cid>,
    /// Every block this run stored in it.
    total: u64,
}

struct Entry {
    sys: Arc<System>,
    stored: Stored,
}

/// S3 credentials of the benchmark key.
pub(crate) struct S3Access {
    pub(crate) endpoint: String,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

struct Bench<'a> {
    opts: &'a Options,
    cluster: Arc<Cluster>,
    conn: Option<Arc<Connector>>,
    s3: Option<S3Access>,
    entries: Vec<Entry>,
    ticks_per_sec: f64,
    phase: usize,
    phases: usize,
}

/// Runs the benchmark: starts a cluster in `opts.dir`, runs every phase,
/// prints a table per workload as it completes, and returns the report.
/// The cluster's nodes stop when this returns.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.systems.is_empty(), "no system to benchmark");
    anyhow::ensure!(
        opts.ops_scale > 0.0 && opts.ops_scale.is_finite(),
        "--ops-scale must be a positive number"
    );
    refuse_running_cluster(&opts.dir)?;
    let started = Instant::now();
    status(&format!(
        "starting a three-node garage cluster in {} (TCP_NODELAY shim {})",
        opts.dir.display(),
        if opts.nodelay { "on" } else { "off" }
    ));
    let cluster = start_own_cluster(&opts.dir, opts.nodelay)
        .await
        .context("starting the benchmark cluster")?;
    status(&format!("cluster healthy in {:.1?}", started.elapsed()));

    let mut bench = Bench {
        opts,
        cluster,
        conn: None,
        s3: None,
        entries: Vec::new(),
        ticks_per_sec: measure::clock_ticks_per_sec(),
        phase: 0,
        phases: opts.workloads.len() * CONCURRENCY.len() * opts.systems.len(),
    };
    let result = bench.run_all().await;
    // Stop the connector's background work (presence filters polling)
    // before its cluster goes away.
    bench.entries.clear();
    if let Some(conn) = bench.conn.take() {
        conn.shutdown();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut report = result?;
    report.settings["total_seconds"] = serde_json::json!(round(started.elapsed().as_secs_f64(), 1));
    Ok(report)
}

/// Starts a cluster of a command's own (bench, soak) on free ports, its
/// nodes attached to this process.
pub(crate) async fn start_own_cluster(
    dir: &std::path::Path,
    nodelay: bool,
) -> Result<Arc<Cluster>, harness::HarnessError> {
    Cluster::start(StartOptions {
        dir: dir.to_owned(),
        ports: Ports::Free,
        lifetime: Lifetime::Attached,
        nodelay,
        network: harness::Network::Loopback,
    })
    .await
}

/// A cluster directory whose nodes run would be re-rendered with other
/// ports under them.
pub(crate) fn refuse_running_cluster(dir: &std::path::Path) -> anyhow::Result<()> {
    if let Ok(existing) = Cluster::open(dir) {
        if (0..existing.nodes.len()).any(|i| existing.node_pid(i).is_some()) {
            anyhow::bail!(
                "garage nodes are running in {}; stop them first (garage-ipfs cluster down --dir {})",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The benchmark's S3 key on `cluster` (created unless it exists).
pub(crate) fn s3_key(cluster: &Cluster) -> anyhow::Result<S3Access> {
    let out = match cluster.garage_cli(0, &["key", "info", "--show-secret", KEY_NAME]) {
        Ok(out) => out,
        Err(_) => cluster.garage_cli(0, &["key", "create", KEY_NAME])?,
    };
    let (key_id, secret) = parse_key_output(&out)
        .with_context(|| format!("cannot read the key from `garage key create`:\n{out}"))?;
    Ok(S3Access {
        endpoint: format!("http://{}", cluster.nodes[0].s3),
        key_id,
        secret,
    })
}

/// Creates a bucket (unless it exists) and lets the benchmark's key use it.
pub(crate) fn s3_bucket(cluster: &Cluster, bucket: &str) -> anyhow::Result<()> {
    if cluster.garage_cli(0, &["bucket", "info", bucket]).is_err() {
        cluster.garage_cli(0, &["bucket", "create", bucket])?;
    }
    cluster.garage_cli(
        0,
        &[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", KEY_NAME,
        ],
    )?;
    Ok(())
}

fn status(line: &str) {
    eprintln!("bench: {line}");
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Bench<'_> {
    async fn run_all(&mut self) -> anyhow::Result<Report> {
        self.setup().await?;
        let mut report = Report {
            machine: self.machine(),
            settings: self.settings(),
            ..Default::default()
        };
        for &w in &self.opts.workloads {
            for &concurrency in &CONCURRENCY {
                for idx in 0..self.entries.len() {
                    let m = self.phase(w, concurrency, idx).await.with_context(|| {
                        format!(
                            "{} at concurrency {concurrency} on {}",
                            w.name(),
                            self.entries[idx].sys.kind().name()
                        )
                    })?;
                    let map = if concurrency == 1 {
                        &mut report.workloads_c1
                    } else {
                        &mut report.workloads
                    };
                    map.entry(w.name().to_string())
                        .or_default()
                        .insert(self.entries[idx].sys.kind().name().to_string(), m);
                }
            }
            report.fill_ratios(w.name());
            self.emit(&report::workload_table(
                &report,
                w.name(),
                &self.opts.systems,
            ));
        }
        if self.opts.scale_curve {
            self.scale_curve(&mut report).await?;
            if !report.scale.is_empty() {
                self.emit(&report::scale_table(&report));
            }
            if let Some(filter) = &report.filter {
                self.emit(&report::filter_table(filter));
            }
        }
        if let Some(sys) = self.entry(SystemKind::Connector) {
            if let System::Connector { ns, .. } = &*sys.sys {
                let stats = ns.filter_stats().unwrap_or_default();
                report
                    .filter
                    .get_or_insert_with(FilterReport::default)
                    .bench_namespace = Some(stats);
            }
        }
        self.emit(&report::summary(&report));
        Ok(report)
    }

    fn entry(&self, kind: SystemKind) -> Option<&Entry> {
        self.entries.iter().find(|e| e.sys.kind() == kind)
    }

    fn emit(&self, text: &str) {
        if self.opts.tables_to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// Joins the connector, creates the S3 key and bucket, prepares the
    /// local directory.
    async fn setup(&mut self) -> anyhow::Result<()> {
        let systems = self.opts.systems.clone();
        let needs_s3 = systems.contains(&SystemKind::S3);
        let needs_conn = systems.contains(&SystemKind::Connector);
        if needs_conn {
            let state = self.cluster.dir.join("bench-connector");
            std::fs::create_dir_all(&state).with_context(|| state.display().to_string())?;
            let config = self.cluster.connector_config(state, harness::free_port()?);
            let t = Instant::now();
            let conn = Connector::connect(config)
                .await
                .context("joining the cluster")?;
            status(&format!("connector joined in {:.1?}", t.elapsed()));
            self.conn = Some(conn);
        }
        if needs_s3 {
            self.s3 = Some(self.s3_key()?);
            self.s3_bucket(BUCKET)?;
        }
        for kind in systems {
            let sys = match kind {
                SystemKind::Connector => {
                    let store = GarageStore::with_filters(self.conn.clone().expect("joined"));
                    let ns = store.namespace(NAMESPACE)?;
                    wait_filter_ready(&ns).await?;
                    System::Connector { store, ns }
                }
                SystemKind::S3 => System::S3(self.s3_system(BUCKET)?),
                SystemKind::Local => {
                    System::Local(LocalSystem::new(self.cluster.dir.join("bench-local"))?)
                }
            };
            self.entries.push(Entry {
                sys: Arc::new(sys),
                stored: Stored::default(),
            });
        }
        Ok(())
    }

    /// Creates the S3 key, or reads it back in a reused directory (key
    /// names are not unique: creating it again would make a second one).
    fn s3_key(&self) -> anyhow::Result<S3Access> {
        s3_key(&self.cluster)
    }

    fn s3_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        s3_bucket(&self.cluster, bucket)
    }

    fn s3_system(&self, bucket: &str) -> anyhow::Result<S3System> {
        let s3 = self.s3.as_ref().expect("S3 key created");
        S3System::new(&s3.endpoint, bucket, &s3.key_id, &s3.secret)
    }

    fn machine(&self) -> serde_json::Value {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        serde_json::json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu_model": cpu_model,
            "memory_bytes": memory_bytes,
            "kernel": kernel,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "garage_version": harness::binary_version(&self.cluster.garage).ok(),
            "garage_ipfs_version": env!("CARGO_PKG_VERSION"),
            "nodelay_shim": self.opts.nodelay,
            "started_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        })
    }

    fn settings(&self) -> serde_json::Value {
        let o = self.opts;
        let ops: BTreeMap<&str, serde_json::Value> = o
            .workloads
            .iter()
            .map(|&w| {
                (
                    w.name(),
                    serde_json::json!({ "c16": o.ops(w, 16), "c1": o.ops(w, 1) }),
                )
            })
            .collect();
        let (scale_put, scale_get) = o.scale_ops();
        serde_json::json!({
            "ops_scale": o.ops_scale,
            "quick": o.quick,
            "systems": o.systems,
            "workloads": o.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "concurrency": CONCURRENCY,
            "ops": ops,
            "warmup": "untimed, 5% of the timed ops (5 to 50), same concurrency; none for list",
            "pause_ms": o.pause.as_millis() as u64,
            "blocks": "random bytes, CIDv1 raw sha2-256; each system its own blocks",
            "big_block_bytes": BIG_BLOCK,
            "small_block_bytes": SMALL_BLOCK,
            "hot_set_blocks": o.hot_set(),
            "zipf_s": ZIPF_S,
            "lookups": "has_absent and has_present: even ops has(), odd ops get_size()",
            "list": "ops are blocks listed; latencies are per 1000 blocks (per listing when shorter); \
                     concurrency 16 runs 16 listings at once",
            "scale_points": if o.scale_curve { o.scale_points() } else { Vec::new() },
            "scale_put_ops": scale_put,
            "scale_get_ops": scale_get,
            "scale_concurrency": SCALE_CONCURRENCY,
            "nodelay_shim": o.nodelay,
            "connector": {
                "namespace": NAMESPACE,
                "scale_namespace": SCALE_NAMESPACE,
                "store": "GarageStore::with_filters",
                "cache": "64 MiB block cache, emptied before each phase, on only for get_hot and has_absent: cold reads come from the cluster",
                "client_requests": "RPCs the connector issued",
            },
            "s3": {
                "client": "object_store (AmazonS3), path-style, region garage",
                "endpoint": self.s3.as_ref().map(|s| s.endpoint.clone()),
                "bucket": BUCKET,
                "scale_bucket": SCALE_BUCKET,
                "key": "blocks/<kubo datastore key>",
                "client_requests": "HTTP requests, retries included",
            },
            "local": {
                "layout": "<dir>/<next-to-last 2 chars>/<kubo datastore key>.data, tmp file + rename, no fsync",
            },
            "cluster_rpcs": "RPCs the connector issued plus those the nodes sent (rpc_request_counter, \
                             calls to self included), per op",
            "cpu": "server: utime+stime of the 3 garage processes; client: this process; per op",
        })
    }

    /// Reads every counter a phase is measured by.
    async fn snapshot(&self, sys: &System) -> anyhow::Result<Snapshot> {
        let mut node_rpcs = 0.0;
        let mut node_s3_requests = 0.0;
        for node in &self.cluster.nodes {
            let text = measure::scrape(node.admin).await?;
            node_rpcs += measure::sum_metric(&text, measure::RPC_COUNTER);
            node_s3_requests += measure::sum_metric(&text, measure::S3_COUNTER);
        }
        let mut node_ticks = 0;
        for i in 0..self.cluster.nodes.len() {
            let pid = self
                .cluster
                .node_pid(i)
                .with_context(|| format!("garage node{} is not running", i + 1))?;
            node_ticks += measure::process_cpu_ticks(pid)
                .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        }
        Ok(Snapshot {
            node_rpcs,
            node_s3_requests,
            node_cpu: node_ticks as f64 / self.ticks_per_sec,
            self_cpu: measure::self_cpu_seconds().context("getrusage failed")?,
            client_requests: sys.client_requests(),
        })
    }

    fn next_label(&mut self, what: &str) -> String {
        self.phase += 1;
        format!("[{}/{}] {what}", self.phase, self.phases)
    }

    /// Runs `op` untimed (warm-up).
    async fn untimed(&self, n: usize, concurrency: usize, op: OpFn) -> anyhow::Result<()> {
        if n > 0 {
            drive(n, concurrency, &ProgressBar::hidden(), op).await?;
        }
        Ok(())
    }

    /// The untimed warm-up (ops `0..warm`), then the timed phase (ops
    /// `warm..warm + n`) of one workload.
    #[allow(clippy::too_many_arguments)]
    async fn warm_then_time(
        &self,
        label: &str,
        sys: &System,
        w: Workload,
        n: usize,
        warm: usize,
        concurrency: usize,
        op: impl Fn(usize) -> OpFn,
    ) -> anyhow::Result<Metrics> {
        self.untimed(warm, concurrency, op(0)).await?;
        self.timed(label, sys, n, concurrency, w.moves_data(), op(warm))
            .await
    }

    /// Pauses, then runs `op` timed, between two snapshots.
    async fn timed(
        &self,
        label: &str,
        sys: &System,
        n: usize,
        concurrency: usize,
        moves_data: bool,
        op: OpFn,
    ) -> anyhow::Result<Metrics> {
        tokio::time::sleep(self.opts.pause).await;
        let bar = crate::cli::util::progress(Some(n as u64), false, label);
        let before = self.snapshot(sys).await?;
        let run = drive(n, concurrency, &bar, op).await;
        bar.finish_and_clear();
        let run = run?;
        let after = self.snapshot(sys).await?;
        let m = compute_metrics(sys.kind(), &run, &before, &after, moves_data);
        status(&format!(
            "{label}: {} ops in {:.2}s, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            m.ops, m.seconds, m.ops_per_s, m.p50_ms, m.p99_ms
        ));
        Ok(m)
    }

    /// One timed phase: a workload at a concurrency on one system.
    async fn phase(
        &mut self,
        w: Workload,
        concurrency: usize,
        idx: usize,
    ) -> anyhow::Result<Metrics> {
        let sys = self.entries[idx].sys.clone();
        let label = self.next_label(&format!(
            "{} c{concurrency} {}",
            w.name(),
            sys.kind().name()
        ));
        let n = self.opts.ops(w, concurrency);
        // The blocks were just put by this process, so the connector's
        // cache would hold many of them: it is off except for get_hot
        // (popular content, which it is for) and the absent lookups (which
        // it never serves). Reads of the cold workloads come from the
        // cluster, like the S3 path's.
        sys.reset_cache(matches!(w, Workload::GetHot | Workload::HasAbsent));
        // The same access sequence for every system.
        let seed = ((w as u64) << 8) | concurrency as u64;
        let warm = warmup(n);
        match w {
            Workload::Put256k | Workload::Put1k => {
                let size = if w == Workload::Put256k {
                    BIG_BLOCK
                } else {
                    SMALL_BLOCK
                };
                let blocks = Arc::new(random_blocks(warm + n, size).await?);
                self.untimed(warm, concurrency, put_op(sys.clone(), blocks.clone(), 0))
                    .await?;
                let m = self
                    .timed(
                        &label,
                        &sys,
                        n,
                        concurrency,
                        w.moves_data(),
                        put_op(sys.clone(), blocks.clone(), warm),
                    )
                    .await?;
                let stored = &mut self.entries[idx].stored;
                let list = if size == BIG_BLOCK {
                    &mut stored.big
                } else {
                    &mut stored.small
                };
                list.extend(blocks.iter().map(|(cid, _)| *cid));
                stored.total += blocks.len() as u64;
                Ok(m)
            }
            Workload::Get256k | Workload::Get1k => {
                let big = w == Workload::Get256k;
                let size = if big { BIG_BLOCK } else { SMALL_BLOCK };
                let put = if big {
                    Workload::Put256k
                } else {
                    Workload::Put1k
                };
                let pool_len = {
                    let stored = &self.entries[idx].stored;
                    if big {
                        stored.big.len()
                    } else {
                        stored.small.len()
                    }
                };
                if pool_len == 0 {
                    // The put workload did not run: store as many blocks.
                    let count = self.opts.ops(put, 16);
                    let cids = fill(
                        &sys,
                        count,
                        size,
                        &format!("storing {count} blocks to read"),
                    )
                    .await?;
                    let stored = &mut self.entries[idx].stored;
                    stored.total += cids.len() as u64;
                    if big {
                        stored.big = cids
                    } else {
                        stored.small = cids
                    }
                }
                let stored = &self.entries[idx].stored;
                let cids = Arc::new(if big {
                    stored.big.clone()
                } else {
                    stored.small.clone()
                });
                let picks = Arc::new(uniform_picks(seed, warm + n, cids.len()));
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    get_op(sys.clone(), cids.clone(), picks.clone(), offset, size)
                })
                .await
            }
            Workload::GetHot => {
                let cids = self.hot_set(idx).await?;
                let picks = Arc::new(zipf_picks(seed, warm + n, cids.len(), ZIPF_S)?);
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    get_op(
                        sys.clone(),
                        cids.clone(),
                        picks.clone(),
                        offset,
                        SMALL_BLOCK,
                    )
                })
                .await
            }
            Workload::HasAbsent => {
                let cids = Arc::new(absent_cids(warm + n));
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    lookup_op(sys.clone(), cids.clone(), None, offset, None)
                })
                .await
            }
            Workload::HasPresent => {
                let cids = self.hot_set(idx).await?;
                let picks = Arc::new(uniform_picks(seed, warm + n, cids.len()));
                let size = Some(SMALL_BLOCK as u64);
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    lookup_op(sys.clone(), cids.clone(), Some(picks.clone()), offset, size)
                })
                .await
            }
            Workload::List => {
                self.hot_set(idx).await?;
                let at_least = self.entries[idx].stored.total;
                self.timed(
                    &label,
                    &sys,
                    n,
                    concurrency,
                    w.moves_data(),
                    list_op(sys.clone(), at_least),
                )
                .await
            }
        }
    }

    /// The hot set of a system, stored on first use.
    async fn hot_set(&mut self, idx: usize) -> anyhow::Result<Arc<Vec<Cid>>> {
        let want = self.opts.hot_set();
        let entry = &mut self.entries[idx];
        if entry.stored.hot.len() < want {
            let missing = want - entry.stored.hot.len();
            let what = format!(
                "storing the hot set of {} ({missing} blocks)",
                entry.sys.kind().name()
            );
            let cids = fill(&entry.sys, missing, SMALL_BLOCK, &what).await?;
            entry.stored.total += cids.len() as u64;
            entry.stored.hot.extend(cids);
        }
        Ok(Arc::new(entry.stored.hot.clone()))
    }

    /// The scale curve: puts and gets with more and more blocks stored,
    /// and the presence filter's build time.
    async fn scale_curve(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let mut systems: Vec<(Arc<System>, Vec<Cid>)> = Vec::new();
        if let Some(entry) = self.entry(SystemKind::Connector) {
            if let System::Connector { store, .. } = &*entry.sys {
                let ns = store.namespace(SCALE_NAMESPACE)?;
                wait_filter_ready(&ns).await?;
                let sys = System::Connector {
                    store: store.clone(),
                    ns,
                };
                systems.push((Arc::new(sys), Vec::new()));
            }
        }
        if self.entry(SystemKind::S3).is_some() {
            self.s3_bucket(SCALE_BUCKET)?;
            systems.push((
                Arc::new(System::S3(self.s3_system(SCALE_BUCKET)?)),
                Vec::new(),
            ));
        }
        if systems.is_empty() {
            return Ok(());
        }
        let points = self.opts.scale_points();
        let (put_ops, get_ops) = self.opts.scale_ops();
        self.phase = 0;
        self.phases = points.len() * systems.len() * 2;
        let mut filter = FilterReport {
            namespace: SCALE_NAMESPACE.to_string(),
            ..Default::default()
        };
        for &point in &points {
            for (sys, stored) in systems.iter_mut() {
                if stored.len() < point {
                    let missing = point - stored.len();
                    let what = format!(
                        "scale: filling {} up to {point} blocks ({missing} more)",
                        sys.kind().name()
                    );
                    stored.extend(fill(sys, missing, SMALL_BLOCK, &what).await?);
                }
            }
            if let Some(conn) = self.conn.clone() {
                if systems
                    .iter()
                    .any(|(s, _)| s.kind() == SystemKind::Connector)
                {
                    let blocks = systems[0].1.len();
                    let p = filter_build(&conn, blocks).await?;
                    status(&format!(
                        "scale: presence filter of {blocks} blocks built in {:.0} ms, {} bytes ({:.2} per block)",
                        p.build_ms, p.memory_bytes, p.bytes_per_block
                    ));
                    filter.points.push(p);
                }
            }
            for (sys, stored) in systems.iter_mut() {
                let blocks_before = stored.len();
                let label = self.next_label(&format!(
                    "scale {point}: put_1k c{SCALE_CONCURRENCY} {}",
                    sys.kind().name()
                ));
                let warm = warmup(put_ops);
                let blocks = Arc::new(random_blocks(warm + put_ops, SMALL_BLOCK).await?);
                self.untimed(
                    warm,
                    SCALE_CONCURRENCY,
                    put_op(sys.clone(), blocks.clone(), 0),
                )
                .await?;
                let put = self
                    .timed(
                        &label,
                        sys,
                        put_ops,
                        SCALE_CONCURRENCY,
                        true,
                        put_op(sys.clone(), blocks.clone(), warm),
                    )
                    .await
                    .with_context(|| label.clone())?;
                stored.extend(blocks.iter().map(|(cid, _)| *cid));

                let label = self.next_label(&format!(
                    "scale {point}: get_1k c{SCALE_CONCURRENCY} {}",
                    sys.kind().name()
                ));
                let warm = warmup(get_ops);
                sys.reset_cache(false);
                let cids = Arc::new(stored.clone());
                let picks = Arc::new(uniform_picks(point as u64, warm + get_ops, cids.len()));
                self.untimed(
                    warm,
                    SCALE_CONCURRENCY,
                    get_op(sys.clone(), cids.clone(), picks.clone(), 0, SMALL_BLOCK),
                )
                .await?;
                let get = self
                    .timed(
                        &label,
                        sys,
                        get_ops,
                        SCALE_CONCURRENCY,
                        true,
                        get_op(sys.clone(), cids, picks, warm, SMALL_BLOCK),
                    )
                    .await
                    .with_context(|| label.clone())?;
                report.scale.push(ScalePoint {
                    blocks: blocks_before as u64,
                    system: sys.kind().name().to_string(),
                    put,
                    get,
                });
            }
        }
        if !filter.points.is_empty() {
            report
                .filter
                .get_or_insert_with(FilterReport::default)
                .namespace = filter.namespace;
            report.filter.as_mut().expect("set").points = filter.points;
        }
        Ok(())
    }
}

/// Stores `count` new small or big blocks, many at once (`put_many`
/// batches, several in flight), untimed; returns their CIDs.
async fn fill(
    sys: &Arc<System>,
    count: usize,
    size: usize,
    what: &str,
) -> anyhow::Result<Vec<Cid>> {
    let t = Instant::now();
    let bar = crate::cli::util::progress(Some(count as u64), false, what);
    let batches: anyhow::Result<Vec<Vec<Cid>>> =
        futures::stream::iter((0..count).step_by(FILL_BATCH))
            .map(|start| {
                let len = FILL_BATCH.min(count - start);
                let (sys, bar) = (sys.clone(), bar.clone());
                async move {
                    let blocks = random_blocks(len, size).await?;
                    let cids: Vec<Cid> = blocks.iter().map(|(cid, _)| *cid).collect();
                    sys.put_many(blocks).await?;
                    bar.inc(len as u64);
                    Ok::<_, anyhow::Error>(cids)
                }
            })
            .buffer_unordered(FILL_IN_FLIGHT)
            .try_collect()
            .await;
    bar.finish_and_clear();
    let cids: Vec<Cid> = batches?.into_iter().flatten().collect();
    status(&format!("{what}: done in {:.1?}", t.elapsed()));
    Ok(cids)
}

/// Waits until a namespace's presence filter answers.
async fn wait_filter_ready(ns: &crate::store::Namespace) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let stats = ns
            .filter_stats()
            .context("the store keeps no presence filter for this namespace")?;
        if stats.ready {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < FILTER_READY_LIMIT,
            "the presence filter of {:?} was not ready after {FILTER_READY_LIMIT:?}",
            ns.name()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Time from a fresh store's namespace handle to its presence filter
/// answering, and the filter's size.
async fn filter_build(conn: &Arc<Connector>, blocks: usize) -> anyhow::Result<FilterPoint> {
    let t = Instant::now();
    let store = GarageStore::with_filters(conn.clone());
    let ns = store.namespace(SCALE_NAMESPACE)?;
    wait_filter_ready(&ns).await?;
    let build = t.elapsed();
    let stats = ns.filter_stats().unwrap_or_default();
    Ok(FilterPoint {
        blocks: blocks as u64,
        build_ms: build.as_secs_f64() * 1e3,
        entries: stats.entries,
        memory_bytes: stats.memory_bytes,
        bytes_per_block: stats.memory_bytes as f64 / (stats.entries.max(1)) as f64,
    })
}

/// Parses the key id and secret out of `garage key create` / `key info
/// --show-secret`.
fn parse_key_output(out: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some((field("Key ID:")?, field("Secret key:")?))
}

/// A phase's numbers from its run and the counters around it.
fn compute_metrics(
    kind: SystemKind,
    run: &Run,
    before: &Snapshot,
    after: &Snapshot,
    moves_data: bool,
) -> Metrics {
    let ops = run.units.max(1) as f64;
    let seconds = run.wall.as_secs_f64().max(1e-9);
    let mut lat = run.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let per_op = |x: f64| x / ops;
    let cpu_us = |seconds: f64| seconds.max(0.0) * 1e6 / ops;
    let node_rpcs = (after.node_rpcs - before.node_rpcs).max(0.0);
    let client = match (before.client_requests, after.client_requests) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
        _ => None,
    };
    let (client_requests, cluster_rpcs, node_rpcs_per_op, s3_api, server_cpu) = match kind {
        SystemKind::Local => (None, Some(0.0), None, None, 0.0),
        SystemKind::Connector => (
            client.map(per_op),
            client.map(|c| per_op(c + node_rpcs)),
            Some(per_op(node_rpcs)),
            None,
            cpu_us(after.node_cpu - before.node_cpu),
        ),
        SystemKind::S3 => (
            client.map(per_op),
            Some(per_op(node_rpcs)),
            Some(per_op(node_rpcs)),
            Some(per_op(
                (after.node_s3_requests - before.node_s3_requests).max(0.0),
            )),
            cpu_us(after.node_cpu - before.node_cpu),
        ),
    };
    Metrics {
        ops: run.units,
        seconds,
        ops_per_s: run.units as f64 / seconds,
        mib_per_s: moves_data.then(|| run.bytes as f64 / seconds / (1024.0 * 1024.0)),
        p50_ms: measure::percentile(&lat, 50.0),
        p99_ms: measure::percentile(&lat, 99.0),
        client_requests_per_op: client_requests,
        cluster_rpcs_per_op: cluster_rpcs,
        node_rpcs_per_op,
        s3_api_requests_per_op: s3_api,
        server_cpu_us_per_op: server_cpu,
        client_cpu_us_per_op: cpu_us(after.self_cpu - before.self_cpu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_create_output_parses() {
        let out = "==== ACCESS KEY INFORMATION ====\n\
                   Key ID:              GK55e4bdfc4dfaba248afabab4\n\
                   Key name:            bench-key\n\
                   Secret key:          7896762e78fcb1853dadcac006c99a153a8a78a692bd1e7a59dbe8bbae70a188\n\
                   Created:             2026-11-25 00:54:24.666 +00:00\n";
        assert_eq!(
            parse_key_output(out),
            Some((
                "GK55e4bdfc4dfaba248afabab4".to_string(),
                "7896762e78fcb1853dadcac006c99a153a8a78a692bd1e7a59dbe8bbae70a188".to_string()
            ))
        );
        assert_eq!(parse_key_output("Key ID: GK1\n"), None);
    }

    #[test]
    fn zipf_picks_favour_low_ranks_and_stay_in_range() {
        let picks = zipf_picks(7, 20_000, 1000, ZIPF_S).unwrap();
        assert!(picks.iter().all(|&p| p < 1000));
        let top = picks.iter().filter(|&&p| p == 0).count();
        let tail = picks.iter().filter(|&&p| p == 999).count();
        assert!(top > 1000 && tail < 20, "rank 0: {top}, rank 999: {tail}");
        assert_eq!(picks, zipf_picks(7, 20_000, 1000, ZIPF_S).unwrap());
    }

    #[test]
    fn op_counts_scale_with_floors() {
        let mut o = Options {
            dir: PathBuf::new(),
            nodelay: true,
            ops_scale: 1.0,
            quick: false,
            systems: SystemKind::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            scale_curve: true,
            pause: Duration::ZERO,
            tables_to_stderr: false,
        };
        assert_eq!(o.ops(Workload::HasAbsent, 16), 100_000);
        assert_eq!(o.scale_points(), vec![1_000, 10_000, 100_000]);
        o.ops_scale = 0.001;
        assert_eq!(o.ops(Workload::Put256k, 1), MIN_OPS);
        assert_eq!(o.ops(Workload::List, 16), 16);
        assert_eq!(o.hot_set(), 100);
        assert_eq!(o.scale_points(), vec![50, 100]);
    }

    fn snapshot(rpcs: f64, s3: f64, node_cpu: f64, self_cpu: f64, client: Option<u64>) -> Snapshot {
        Snapshot {
            node_rpcs: rpcs,
            node_s3_requests: s3,
            node_cpu,
            self_cpu,
            client_requests: client,
        }
    }

    #[test]
    fn metrics_per_op() {
        let run = Run {
            wall: Duration::from_secs(2),
            latencies_ms: (1..=100).map(f64::from).collect(),
            bytes: 100 * 1024 * 1024,
            units: 100,
        };
        let before = snapshot(1000.0, 10.0, 5.0, 1.0, Some(50));
        let after = snapshot(1600.0, 210.0, 6.0, 1.5, Some(350));
        let c = compute_metrics(SystemKind::Connector, &run, &before, &after, true);
        assert_eq!(c.ops, 100);
        assert_eq!(c.ops_per_s, 50.0);
        assert_eq!(c.mib_per_s, Some(50.0));
        assert_eq!((c.p50_ms, c.p99_ms), (50.0, 99.0));
        assert_eq!(c.client_requests_per_op, Some(3.0));
        assert_eq!(c.cluster_rpcs_per_op, Some(9.0));
        assert_eq!(c.node_rpcs_per_op, Some(6.0));
        assert_eq!(c.server_cpu_us_per_op, 10_000.0);
        assert_eq!(c.client_cpu_us_per_op, 5_000.0);

        let s = compute_metrics(SystemKind::S3, &run, &before, &after, false);
        assert_eq!(s.mib_per_s, None);
        assert_eq!(s.cluster_rpcs_per_op, Some(6.0));
        assert_eq!(s.s3_api_requests_per_op, Some(2.0));

        let l = compute_metrics(SystemKind::Local, &run, &before, &after, true);
        assert_eq!(l.client_requests_per_op, None);
        assert_eq!(l.cluster_rpcs_per_op, Some(0.0));
        assert_eq!(l.server_cpu_us_per_op, 0.0);

        let unknown = snapshot(0.0, 0.0, 0.0, 0.0, None);
        let c = compute_metrics(SystemKind::Connector, &run, &unknown, &after, true);
        assert_eq!(c.cluster_rpcs_per_op, None);
    }

    #[tokio::test]
    async fn drive_runs_every_op_once_and_stops_on_error() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let op: OpFn = Arc::new(move |i| {
            s.lock().unwrap().push(i);
            async move { Ok(Done::op(10)) }.boxed()
        });
        let run = drive(100, 16, &ProgressBar::hidden(), op).await.unwrap();
        assert_eq!(
            (run.units, run.bytes, run.latencies_ms.len()),
            (100, 1000, 100)
        );
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());

        let failing: OpFn = Arc::new(|i| {
            async move {
                anyhow::ensure!(i != 5, "op 5 fails");
                Ok(Done::op(0))
            }
            .boxed()
        });
        let err = drive(1000, 4, &ProgressBar::hidden(), failing)
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "op 5 fails");
    }
}
