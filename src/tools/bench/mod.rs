//! `garage-ipfs bench`: three systems side by side on one three-node
//! cluster, with the same workloads and the same kind of data.
//!
//! - `connector`: this crate's store (`GarageStore::with_filters`,
//!   namespace `bench`) through the [`BlockStore`](crate::store::BlockStore)
//!   trait;
//! - `colocated`: the same store reading node 1's block files first (as a
//!   daemon beside a storage node does), puts and gets;
//! - `floor`: bare `PutBlock` to the layout's nodes and `GetBlock` from
//!   one, no ref, no index: what any design on Garage must do;
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

mod driver;
pub mod kubo;
mod measure;
pub mod report;
mod s3;
mod scale;
mod systems;
mod workloads;

use crate::tools::util::outln;
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
use crate::harness::{self, Cluster};
use crate::store::GarageStore;
use crate::Connector;

use driver::*;
pub use report::{FilterPoint, FilterReport, Metrics, Report, ScalePoint, SnapshotCost};
use s3::*;
use scale::*;
pub use systems::{connector_rpc_calls, SystemKind};
use systems::{FloorSystem, LocalSystem, S3System, System};
pub use workloads::Workload;
use workloads::*;

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
/// How long the filter benchmark waits for the counters to settle
/// before it restarts a filter from its snapshot.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

const NAMESPACE: &str = "bench";
/// The `colocated` system's namespace.
const COLOCATED_NAMESPACE: &str = "bench-colocated";
const SCALE_NAMESPACE: &str = "bench-scale";
const BUCKET: &str = "bench";
const SCALE_BUCKET: &str = "bench-scale";

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster directory (node data, the local system's files).
    pub dir: PathBuf,
    /// Run the nodes with the TCP_NODELAY preload shim.
    pub nodelay: bool,
    /// The nodes\' metadata engine (`None`: what `dir` holds, else LMDB).
    pub db_engine: Option<crate::harness::DbEngine>,
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
    pub(super) fn scaled(&self, n: usize, min: usize) -> usize {
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

    pub(super) fn scale_ops(&self) -> (usize, usize) {
        (
            self.scaled(SCALE_OPS.0, MIN_OPS),
            self.scaled(SCALE_OPS.1, MIN_OPS),
        )
    }
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
    other_conns: Vec<Arc<Connector>>,
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
    Cluster::refuse_running(&opts.dir)?;
    let started = Instant::now();
    status(&format!(
        "starting a three-node garage cluster in {} (TCP_NODELAY shim {})",
        opts.dir.display(),
        if opts.nodelay { "on" } else { "off" }
    ));
    let cluster = Cluster::start_own(&opts.dir, opts.nodelay, opts.db_engine)
        .await
        .context("starting the benchmark cluster")?;
    status(&format!("cluster healthy in {:.1?}", started.elapsed()));

    let mut bench = Bench {
        opts,
        cluster,
        conn: None,
        other_conns: Vec::new(),
        s3: None,
        entries: Vec::new(),
        ticks_per_sec: measure::clock_ticks_per_sec(),
        phase: 0,
        phases: CONCURRENCY.len()
            * opts
                .workloads
                .iter()
                .map(|&w| opts.systems.iter().filter(|s| s.runs(w)).count())
                .sum::<usize>(),
    };
    let result = bench.run_all().await;
    // Stop the connector's background work (presence filters polling)
    // before its cluster goes away.
    bench.entries.clear();
    let others = std::mem::take(&mut bench.other_conns);
    for conn in bench.conn.take().into_iter().chain(others) {
        conn.shutdown();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut report = result?;
    report.settings["total_seconds"] = serde_json::json!(round(started.elapsed().as_secs_f64(), 1));
    Ok(report)
}

fn status(line: &str) {
    eprintln!("bench: {line}");
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Bench<'_> {
    pub(super) async fn run_all(&mut self) -> anyhow::Result<Report> {
        self.setup().await?;
        let mut report = Report {
            machine: self.machine(),
            settings: self.settings(),
            ..Default::default()
        };
        for &w in &self.opts.workloads {
            for &concurrency in &CONCURRENCY {
                for idx in 0..self.entries.len() {
                    if !self.entries[idx].sys.kind().runs(w) {
                        continue;
                    }
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

    pub(super) fn entry(&self, kind: SystemKind) -> Option<&Entry> {
        self.entries.iter().find(|e| e.sys.kind() == kind)
    }

    pub(super) fn emit(&self, text: &str) {
        if self.opts.tables_to_stderr {
            eprintln!("{text}");
        } else {
            outln!("{text}");
        }
    }

    /// Joins the connector, creates the S3 key and bucket, prepares the
    /// local directory.
    pub(super) async fn setup(&mut self) -> anyhow::Result<()> {
        let systems = self.opts.systems.clone();
        let needs_s3 = systems.contains(&SystemKind::S3);
        let needs_conn = systems.contains(&SystemKind::Connector);
        if needs_conn {
            self.conn = Some(self.join("bench-connector").await?);
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
                    System::Connector {
                        store,
                        ns,
                        colocated: false,
                    }
                }
                // Connectors of their own, so that each one's requests per
                // op are its own.
                SystemKind::Colocated => {
                    let node1 = vec![self.cluster.nodes[0].data_dir.clone()];
                    let conn = self.join_with("bench-colocated", node1).await?;
                    self.other_conns.push(conn.clone());
                    let store = GarageStore::with_filters(conn);
                    let ns = store.namespace(COLOCATED_NAMESPACE)?;
                    wait_filter_ready(&ns).await?;
                    System::Connector {
                        store,
                        ns,
                        colocated: true,
                    }
                }
                SystemKind::Floor => {
                    let conn = self.join("bench-floor").await?;
                    self.other_conns.push(conn.clone());
                    System::Floor(FloorSystem::new(conn))
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

    /// Joins the cluster as a connector with its state in `label`.
    async fn join(&self, label: &str) -> anyhow::Result<Arc<Connector>> {
        self.join_with(label, Vec::new()).await
    }

    /// [`join`](Self::join), reading blocks from `colocated` data
    /// directories first.
    async fn join_with(
        &self,
        label: &str,
        colocated: Vec<PathBuf>,
    ) -> anyhow::Result<Arc<Connector>> {
        let state = self.cluster.dir.join(label);
        std::fs::create_dir_all(&state).with_context(|| state.display().to_string())?;
        let config = self
            .cluster
            .connector_config(state, harness::free_port()?)
            .with_colocated_data_dirs(colocated);
        let t = Instant::now();
        let conn = Connector::connect(config)
            .await
            .with_context(|| format!("joining the cluster ({label})"))?;
        status(&format!("{label} joined in {:.1?}", t.elapsed()));
        Ok(conn)
    }

    /// Creates the S3 key, or reads it back in a reused directory (key
    /// names are not unique: creating it again would make a second one).
    pub(super) fn s3_key(&self) -> anyhow::Result<S3Access> {
        s3_key(&self.cluster)
    }

    pub(super) fn s3_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        s3_bucket(&self.cluster, bucket)
    }

    pub(super) fn s3_system(&self, bucket: &str) -> anyhow::Result<S3System> {
        let s3 = self.s3.as_ref().expect("S3 key created");
        S3System::new(&s3.endpoint, bucket, &s3.key_id, &s3.secret)
    }

    pub(super) fn machine(&self) -> serde_json::Value {
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
            "db_engine": self.cluster.nodes[0].db_engine.name(),
            "started_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        })
    }

    pub(super) fn settings(&self) -> serde_json::Value {
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
            db_engine: None,
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
