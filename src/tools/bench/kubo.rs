//! `garage-ipfs kubo bench`: kubo with our datastore plugin, side by side
//! with kubo on go-ds-s3 (this cluster's S3 API, with and without kubo's
//! Bloom filter) and kubo on flatfs (the local floor), in one run, on a
//! fresh three-node cluster.
//!
//! Every system is a real kubo daemon (the binaries of
//! [`crate::harness::kubo`]), driven by the `ipfs` command as a user would,
//! one system at a time. A second, stock kubo node (B, flatfs, a fresh repo
//! per system) is connected to the system's node (A) only, over loopback.
//! For each workload: wall time, the requests that reached Garage (our
//! daemon's cluster calls, or the S3 requests the nodes served), the RPCs
//! the nodes sent among themselves, and CPU of kubo A, of our daemon (a
//! process of its own) and of the three Garage nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::{measure, s3_bucket, s3_key};
use crate::garage::Role;
use crate::harness::kubo::{
    kubo_binary, Flavour, GarageSpec, KuboConfig, KuboNode, TokenSource, KUBO_VERSION,
};
use crate::harness::{self, process, Cluster};
use crate::store::GarageStore;
use crate::Connector;

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// kubo with the garage-ipfs plugin, through our daemon.
    Garage,
    /// kubo with go-ds-s3 on the cluster's S3 API.
    S3,
    /// The same, with kubo's Bloom filter (`Datastore.BloomFilterSize`).
    S3Bloom,
    /// kubo as released: flatfs on the local disk.
    Flatfs,
}

impl Kind {
    /// Every system, in table order.
    pub const ALL: [Kind; 4] = [Kind::Garage, Kind::S3, Kind::S3Bloom, Kind::Flatfs];

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Garage => "garage",
            Kind::S3 => "s3",
            Kind::S3Bloom => "s3-bloom",
            Kind::Flatfs => "flatfs",
        }
    }
}

/// The workloads, in the order they run on each system.
pub const WORKLOADS: [&str; 8] = [
    "add",
    "restart",
    "cat_cold",
    "cat_warm",
    "bitswap_fetch",
    "absent_flood",
    "refs_local",
    "repo_gc",
];

/// What each workload is, for the report.
const WORKLOAD_NOTES: [(&str, &str); 8] = [
    ("add", "ipfs add of the file (kubo's default chunker), per block stored"),
    ("restart", "ipfs daemon start until ready, after the add (kubo's Bloom filter is built here)"),
    ("cat_cold", "ipfs cat of the file after restarting kubo (and our daemon), per block"),
    ("cat_warm", "ipfs cat of the file again, per block"),
    ("bitswap_fetch", "node B (stock kubo, fresh repo) cats the file from A over bitswap, per block"),
    ("absent_flood", "B wants absent CIDs (block/stat, 1 s timeout, 512 at once), A is its only peer; per CID"),
    ("refs_local", "ipfs refs local, per key; correct = exactly the blocks the store holds (listed from the store itself)"),
    ("repo_gc", "ipfs pin rm of the file, then ipfs repo gc, per block removed; correct = the store then holds exactly the pinned DAGs and MFS"),
];

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster and repo directory.
    pub dir: PathBuf,
    /// Size of the added file, MiB.
    pub size_mib: usize,
    /// Absent CIDs of the flood.
    pub absent: usize,
    /// `Datastore.BloomFilterSize` of the s3-bloom system, bytes.
    pub bloom_bytes: u64,
    /// Run the nodes with the TCP_NODELAY shim.
    pub nodelay: bool,
    /// The nodes\' metadata engine (`None`: what `dir` holds, else LMDB).
    pub db_engine: Option<crate::harness::DbEngine>,
    /// Systems, in order.
    pub systems: Vec<Kind>,
    /// Our daemon reads block files from node 1's data directory first.
    pub colocated: bool,
}

/// One workload on one system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measure {
    /// Wall time.
    pub seconds: f64,
    /// Operations (blocks, keys or CIDs, as the workload says).
    pub ops: u64,
    /// Requests that reached Garage from the system: our daemon's cluster
    /// calls, or the S3 requests the nodes served.
    pub garage_requests: f64,
    /// `garage_requests / ops`.
    pub garage_requests_per_op: f64,
    /// Requests our daemon sent meanwhile for no operation of kubo's: its
    /// presence filter's polling of the index counters and rolling
    /// refresh (about one counter read a second and every shard listed
    /// once a minute, per namespace, whatever the load).
    pub background_requests: f64,
    /// Lookups our daemon's presence filter let through that the index
    /// then answered absent (garage system only): the lookups that may
    /// cost a cluster call for an absent block.
    pub filter_false_positives: f64,
    /// RPCs the nodes sent (replication, table sync), all nodes.
    pub node_rpcs: f64,
    /// CPU seconds of kubo A.
    pub cpu_kubo: f64,
    /// CPU seconds of our daemon (garage system only).
    pub cpu_daemon: f64,
    /// CPU seconds of the three Garage nodes.
    pub cpu_nodes: f64,
    /// Whether the answer was right (where the workload checks one).
    pub correct: Option<bool>,
    /// What went wrong, when something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The machine and versions.
    pub machine: serde_json::Value,
    /// The run's settings and what the figures mean.
    pub settings: serde_json::Value,
    /// workload → system → measure.
    pub results: BTreeMap<String, BTreeMap<String, Measure>>,
    /// workload → go-ds-s3's wall time over ours (above 1: we are faster).
    pub speedup_vs_s3: BTreeMap<String, f64>,
}

/// Counters read before and after a workload.
struct Snap {
    at: Instant,
    s3_requests: f64,
    node_rpcs: f64,
    daemon_calls: f64,
    daemon_background: f64,
    daemon_false_positives: f64,
    cpu_kubo: f64,
    cpu_daemon: f64,
    cpu_nodes: f64,
}

/// Our daemon, a process of its own so that its CPU is its own.
struct Daemon {
    config: PathBuf,
    log: PathBuf,
    rpc: SocketAddr,
    grpc: SocketAddr,
    child: Option<std::process::Child>,
}

impl Daemon {
    async fn start(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding this program")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(process::spawn_attached(cmd)?);
        let url = format!("http://{}/api/v0/version", self.rpc);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.post(&url).send().await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemon did not answer within 60 s (log: {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = process::signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where a system keeps its blocks.
enum Store {
    /// Our namespace.
    Namespace(String),
    /// go-ds-s3's bucket.
    Bucket(String),
    /// flatfs's directory.
    Flatfs(PathBuf),
}

struct Bench<'a> {
    opts: &'a Options,
    cluster: Arc<Cluster>,
    daemon: Daemon,
    admin: Arc<GarageStore>,
    s3: super::S3Access,
    file: PathBuf,
    ticks: f64,
}

fn status(line: &str) {
    eprintln!("kubo bench: {line}");
}

/// Runs the benchmark; the cluster, daemon and kubo nodes stop when it
/// returns.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.systems.is_empty(), "no system to benchmark");
    Cluster::refuse_running(&opts.dir)?;
    let started = Instant::now();
    let bins = tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
        for f in [Flavour::Garage, Flavour::Stock, Flavour::S3] {
            kubo_binary(f)?;
        }
        Ok(())
    });
    bins.await??;
    status(&format!(
        "starting a three-node garage cluster in {}",
        opts.dir.display()
    ));
    let cluster = Cluster::start_own(&opts.dir, opts.nodelay, opts.db_engine).await?;

    let daemon_dir = opts.dir.join("daemon");
    std::fs::create_dir_all(&daemon_dir)?;
    let ports = [
        harness::free_port()?,
        harness::free_port()?,
        harness::free_port()?,
    ];
    let config = daemon_dir.join("connector.toml");
    let mut text = cluster.daemon_config(
        &daemon_dir.join("state"),
        harness::free_port()?,
        ports,
        "default",
        &[("allow_anonymous_writes_on_loopback", true.into())],
    );
    if opts.colocated {
        let mut t: toml::Table = text.parse()?;
        let dir = cluster.nodes[0].data_dir.display().to_string();
        t.insert(
            "colocated_data_dirs".into(),
            toml::Value::Array(vec![dir.into()]),
        );
        text = toml::to_string(&t)?;
    }
    std::fs::write(&config, text)?;
    let daemon = Daemon {
        config: config.clone(),
        log: daemon_dir.join("daemon.log"),
        rpc: SocketAddr::from(([127, 0, 0, 1], ports[1])),
        grpc: SocketAddr::from(([127, 0, 0, 1], ports[2])),
        child: None,
    };
    let admin_config = crate::config::read_config(&config)?;
    let admin = GarageStore::new(Connector::connect_as(admin_config, Role::Client).await?);
    let s3 = s3_key(&cluster)?;
    let file = opts.dir.join("payload.bin");
    write_random(&file, opts.size_mib << 20)?;
    let mut bench = Bench {
        opts,
        cluster,
        daemon,
        admin,
        s3,
        file,
        ticks: measure::clock_ticks_per_sec(),
    };
    let mut report = Report {
        machine: bench.machine(),
        settings: bench.settings(),
        ..Default::default()
    };
    for &kind in &opts.systems {
        let measures = bench
            .system(kind)
            .await
            .with_context(|| format!("system {}", kind.name()))?;
        for (w, m) in measures {
            report
                .results
                .entry(w.to_string())
                .or_default()
                .insert(kind.name().to_string(), m);
        }
    }
    for w in WORKLOADS {
        let by = &report.results.get(w);
        let secs = |k: Kind| by.and_then(|b| b.get(k.name())).map(|m| m.seconds);
        if let (Some(ours), Some(s3)) = (secs(Kind::Garage), secs(Kind::S3)) {
            if ours > 0.0 {
                report
                    .speedup_vs_s3
                    .insert(w.to_string(), (s3 / ours * 100.0).round() / 100.0);
            }
        }
    }
    report.settings["total_seconds"] = json!(started.elapsed().as_secs_f64().round());
    bench.admin.connector().shutdown();
    bench.daemon.stop();
    Ok(report)
}

fn write_random(path: &Path, n: usize) -> anyhow::Result<()> {
    use rand::RngCore;
    let mut data = vec![0u8; n];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, data).with_context(|| path.display().to_string())
}

/// Runs a blocking closure off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// `ipfs ARGS` on a node, off the runtime: stdout.
async fn ipfs(node: &Arc<KuboNode>, args: &[&str]) -> anyhow::Result<String> {
    let (node, args) = (
        node.clone(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(node.run(&args)?)
    })
    .await
}

/// `ipfs ARGS` on a node: raw stdout bytes (cat).
async fn ipfs_bytes(node: &Arc<KuboNode>, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let node = node.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    blocking(move || {
        let out = node.command().args(&args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ipfs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    })
    .await
}

/// Multihashes of lines of CIDs.
fn multihashes(text: &str) -> anyhow::Result<BTreeSet<Vec<u8>>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|c| Ok(cid::Cid::try_from(c)?.hash().to_bytes()))
        .collect()
}

/// The blocks of a DAG, root included.
async fn dag(node: &Arc<KuboNode>, root: &str) -> anyhow::Result<BTreeSet<Vec<u8>>> {
    let refs = ipfs(node, &["refs", "-r", "--unique", root]).await?;
    let mut set = multihashes(&refs)?;
    set.insert(cid::Cid::try_from(root)?.hash().to_bytes());
    Ok(set)
}

impl Bench<'_> {
    async fn snap(&self, kubo: Option<u32>) -> anyhow::Result<Snap> {
        let mut s3_requests = 0.0;
        let mut node_rpcs = 0.0;
        let mut cpu_nodes = 0u64;
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            let text = measure::scrape(node.admin).await?;
            s3_requests += measure::sum_metric(&text, measure::S3_COUNTER);
            node_rpcs += measure::sum_metric(&text, measure::RPC_COUNTER);
            let pid = self
                .cluster
                .node_pid(i)
                .with_context(|| format!("garage node{} is not running", i + 1))?;
            cpu_nodes += measure::process_cpu_ticks(pid).unwrap_or(0);
        }
        let (daemon_calls, daemon_background, daemon_false_positives) = match self.daemon.pid() {
            Some(_) => daemon_figures(&measure::scrape(self.daemon.rpc).await?),
            None => (0.0, 0.0, 0.0),
        };
        let cpu = |pid: Option<u32>| {
            pid.and_then(measure::process_cpu_ticks).unwrap_or(0) as f64 / self.ticks
        };
        Ok(Snap {
            at: Instant::now(),
            s3_requests,
            node_rpcs,
            daemon_calls,
            daemon_background,
            daemon_false_positives,
            cpu_kubo: cpu(kubo),
            cpu_daemon: cpu(self.daemon.pid()),
            cpu_nodes: cpu_nodes as f64 / self.ticks,
        })
    }

    /// The measure between two snapshots. A kubo that restarted in between
    /// counts from zero (its `before` was another process).
    fn delta(&self, kind: Kind, before: &Snap, after: &Snap, ops: u64) -> Measure {
        let garage_requests = match kind {
            Kind::Garage => after.daemon_calls - before.daemon_calls,
            Kind::S3 | Kind::S3Bloom => after.s3_requests - before.s3_requests,
            Kind::Flatfs => 0.0,
        };
        let cpu_kubo = if after.cpu_kubo >= before.cpu_kubo {
            after.cpu_kubo - before.cpu_kubo
        } else {
            after.cpu_kubo
        };
        Measure {
            seconds: round3(after.at.duration_since(before.at).as_secs_f64()),
            ops,
            garage_requests,
            garage_requests_per_op: round3(garage_requests / ops.max(1) as f64),
            background_requests: after.daemon_background - before.daemon_background,
            filter_false_positives: after.daemon_false_positives - before.daemon_false_positives,
            node_rpcs: after.node_rpcs - before.node_rpcs,
            cpu_kubo: round3(cpu_kubo),
            cpu_daemon: match kind {
                Kind::Garage => round3((after.cpu_daemon - before.cpu_daemon).max(0.0)),
                _ => 0.0,
            },
            cpu_nodes: round3(after.cpu_nodes - before.cpu_nodes),
            correct: None,
            note: None,
        }
    }

    /// Makes system `kind`'s repo (test profile: loopback, no bootstrap).
    async fn repo(&self, kind: Kind, repo: &Path) -> anyhow::Result<(Arc<KuboNode>, Store)> {
        let flavour = match kind {
            Kind::Garage => Flavour::Garage,
            Kind::S3 | Kind::S3Bloom => Flavour::S3,
            Kind::Flatfs => Flavour::Stock,
        };
        let bin = blocking(move || Ok(kubo_binary(flavour)?)).await?;
        let (b, r) = (bin.clone(), repo.to_path_buf());
        let mut config =
            blocking(move || Ok(KuboConfig::generate(&b, &r, &["test".to_string()])?)).await?;
        let store = match kind {
            Kind::Garage => Store::Namespace(config.default_namespace()),
            Kind::S3 | Kind::S3Bloom => Store::Bucket(format!("kubo-{}", kind.name())),
            Kind::Flatfs => Store::Flatfs(repo.join("blocks")),
        };
        match kind {
            Kind::Garage => {
                let spec = GarageSpec {
                    namespace: config.default_namespace(),
                    endpoint: self.daemon.grpc.to_string(),
                    token: TokenSource::None,
                    timeout: None,
                };
                self.admin.create_namespace(&spec.namespace).await?;
                config.use_garage(&spec)?;
            }
            Kind::S3 | Kind::S3Bloom => {
                let bucket = format!("kubo-{}", kind.name());
                s3_bucket(&self.cluster, &bucket)?;
                config.mount_blocks(
                    json!({
                        "type": "s3ds",
                        "region": "garage",
                        "bucket": bucket,
                        "accessKey": self.s3.key_id,
                        "secretKey": self.s3.secret,
                        "regionEndpoint": self.s3.endpoint,
                        "rootDirectory": "",
                    }),
                    "s3.datastore",
                )?;
                let bloom = if kind == Kind::S3Bloom {
                    self.opts.bloom_bytes
                } else {
                    0
                };
                config.json["Datastore"]["BloomFilterSize"] = json!(bloom);
            }
            Kind::Flatfs => {}
        }
        let (b, r) = (bin.clone(), repo.to_path_buf());
        blocking(move || Ok(config.init_repo(&b, &r)?)).await?;
        Ok((Arc::new(KuboNode::new(bin, repo)), store))
    }

    /// The blocks a system's store holds, read from the store itself, not
    /// through kubo: our namespace by a client connector of ours, the S3
    /// bucket by a listing, flatfs by its files.
    async fn stored(&self, store: &Store) -> anyhow::Result<BTreeSet<Vec<u8>>> {
        use futures::TryStreamExt;
        let key =
            |k: &str| -> anyhow::Result<Vec<u8>> { Ok(crate::cid::from_dskey(k)?.to_bytes()) };
        match store {
            Store::Namespace(ns) => {
                let ns = self.admin.namespace(ns)?;
                use crate::store::BlockStore;
                let all: Vec<_> = ns.list().try_collect().await?;
                Ok(all.into_iter().map(|mh| mh.to_bytes()).collect())
            }
            Store::Bucket(bucket) => {
                let s3 = super::systems::S3System::new(
                    &self.s3.endpoint,
                    bucket,
                    &self.s3.key_id,
                    &self.s3.secret,
                )?;
                let paths: Vec<_> = s3.list_under(None).try_collect().await?;
                paths.iter().map(|p| key(p.as_ref())).collect()
            }
            Store::Flatfs(dir) => {
                let mut out = BTreeSet::new();
                for shard in std::fs::read_dir(dir)? {
                    let shard = shard?.path();
                    if !shard.is_dir() {
                        continue;
                    }
                    for f in std::fs::read_dir(&shard)? {
                        let p = f?.path();
                        if p.extension().is_some_and(|e| e == "data") {
                            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                            out.insert(key(stem)?);
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Waits until the daemon's presence filter of `ns` is ready (built by
    /// a listing when kubo first uses the namespace after a restart).
    async fn filter_ready(&self, ns: &str) -> anyhow::Result<()> {
        let line = format!("garage_ipfs_filter_ready{{namespace=\"{ns}\"}} 1");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = measure::scrape(self.daemon.rpc).await?;
            if text.lines().any(|l| l.trim() == line) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the filter of {ns} is not ready after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(node: &Arc<KuboNode>) -> anyhow::Result<()> {
        let node = node.clone();
        blocking(move || Ok(node.start(Duration::from_secs(120))?)).await
    }

    async fn stop(node: &Arc<KuboNode>) -> anyhow::Result<()> {
        let node = node.clone();
        blocking(move || {
            node.stop();
            Ok(())
        })
        .await
    }

    /// Every workload on one system. Our daemon runs only while its own
    /// system does: the others do not pay for its presence filter's
    /// polling.
    async fn system(&mut self, kind: Kind) -> anyhow::Result<Vec<(&'static str, Measure)>> {
        if kind == Kind::Garage {
            self.daemon.start().await?;
        }
        let result = self.workloads(kind).await;
        self.daemon.stop();
        result
    }

    async fn workloads(&mut self, kind: Kind) -> anyhow::Result<Vec<(&'static str, Measure)>> {
        let mut out = Vec::new();
        let base = self.opts.dir.join(kind.name());
        let (a, store) = self.repo(kind, &base.join("a")).await?;
        Self::start(&a).await?;
        let want = std::fs::read(&self.file)?;

        status(&format!("{}: add {} MiB", kind.name(), self.opts.size_mib));
        let s = self.snap(a.pid()).await?;
        let root = ipfs(&a, &["add", "-Q", self.file.to_str().unwrap_or_default()]).await?;
        let root = root.trim().to_string();
        let e = self.snap(a.pid()).await?;
        let blocks = dag(&a, &root).await?;
        out.push(("add", self.delta(kind, &s, &e, blocks.len() as u64)));

        status(&format!("{}: restart, cat cold and warm", kind.name()));
        Self::stop(&a).await?;
        if kind == Kind::Garage {
            // Cold: our daemon's block cache goes too.
            self.daemon.stop();
            self.daemon.start().await?;
        }
        let s = self.snap(None).await?;
        Self::start(&a).await?;
        if let Store::Namespace(ns) = &store {
            self.filter_ready(ns).await?;
        }
        let e = self.snap(a.pid()).await?;
        out.push(("restart", self.delta(kind, &s, &e, 1)));
        for w in ["cat_cold", "cat_warm"] {
            let s = self.snap(a.pid()).await?;
            let got = ipfs_bytes(&a, &["cat", &root]).await;
            let e = self.snap(a.pid()).await?;
            let mut m = self.delta(kind, &s, &e, blocks.len() as u64);
            check(&mut m, got.map(|g| g == want));
            out.push((w, m));
        }

        status(&format!(
            "{}: node B fetches over bitswap, then floods",
            kind.name()
        ));
        let (b, _) = self.repo(Kind::Flatfs, &base.join("b")).await?;
        Self::start(&b).await?;
        let (b2, a2) = (b.clone(), a.clone());
        blocking(move || Ok(b2.connect(&a2)?)).await?;
        let s = self.snap(a.pid()).await?;
        let got = ipfs_bytes(&b, &["cat", &root]).await;
        let e = self.snap(a.pid()).await?;
        let mut m = self.delta(kind, &s, &e, blocks.len() as u64);
        check(&mut m, got.map(|g| g == want));
        out.push(("bitswap_fetch", m));

        let s = self.snap(a.pid()).await?;
        let found = flood(&b, self.opts.absent).await;
        // A answers wants as they come; let the last ones arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let e = self.snap(a.pid()).await?;
        let mut m = self.delta(kind, &s, &e, self.opts.absent as u64);
        check(&mut m, found.map(|n| n == 0));
        out.push(("absent_flood", m));
        Self::stop(&b).await?;

        status(&format!("{}: refs local, repo gc", kind.name()));
        let held = self.stored(&store).await?;
        anyhow::ensure!(blocks.is_subset(&held), "the store lost blocks of the file");
        let s = self.snap(a.pid()).await?;
        let listed = ipfs(&a, &["refs", "local"]).await;
        let e = self.snap(a.pid()).await?;
        let listed = listed.and_then(|t| multihashes(&t));
        let n = listed.as_ref().map(|l| l.len() as u64).unwrap_or(0);
        let mut m = self.delta(kind, &s, &e, n);
        check(&mut m, listed.map(|l| l == held));
        out.push(("refs_local", m));

        // GC must keep the pinned DAGs and MFS, and remove all else.
        ipfs(&a, &["pin", "rm", &root]).await?;
        let mut kept = BTreeSet::new();
        let pins = ipfs(&a, &["pin", "ls", "--type=recursive", "--quiet"]).await?;
        let mfs = ipfs(&a, &["files", "stat", "--hash", "/"]).await?;
        for r in pins
            .lines()
            .chain(mfs.lines())
            .filter(|l| !l.trim().is_empty())
        {
            kept.extend(dag(&a, r.trim()).await?);
        }
        let s = self.snap(a.pid()).await?;
        let gc = ipfs(&a, &["repo", "gc", "--quiet"]).await;
        let e = self.snap(a.pid()).await?;
        let removed = gc.as_ref().map(|t| t.lines().count() as u64).unwrap_or(0);
        let mut m = self.delta(kind, &s, &e, removed);
        let after = match gc {
            Ok(_) => self.stored(&store).await,
            Err(e) => Err(e),
        };
        check(&mut m, after.map(|l| l == kept));
        out.push(("repo_gc", m));
        Self::stop(&a).await?;

        for (w, m) in &out {
            status(&format!(
                "{} {w}: {:.2} s, {} Garage requests ({} per op), correct {:?}",
                kind.name(),
                m.seconds,
                m.garage_requests,
                m.garage_requests_per_op,
                m.correct
            ));
        }
        Ok(out)
    }

    fn machine(&self) -> serde_json::Value {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu_model": cpuinfo.lines().find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()),
            "garage_version": harness::binary_version(&self.cluster.garage).ok(),
            "kubo_version": KUBO_VERSION,
            "go_ds_s3_version": "0.11.0",
            "garage_ipfs_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn settings(&self) -> serde_json::Value {
        json!({
            "file_mib": self.opts.size_mib,
            "absent_cids": self.opts.absent,
            "bloom_filter_bytes": self.opts.bloom_bytes,
            "nodelay_shim": self.opts.nodelay,
            "colocated": self.opts.colocated,
            "db_engine": self.cluster.nodes[0].db_engine.name(),
            "systems": self.opts.systems.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "workloads": WORKLOAD_NOTES.iter().map(|(w, n)| (w.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "garage_requests": "garage: cluster calls of our daemon (garage_ipfs_cluster_calls_total); \
                                s3, s3-bloom: S3 requests the nodes served (api_s3_request_counter); flatfs: none",
            "node_rpcs": "RPCs the three nodes sent (rpc_request_counter)",
            "cpu": "utime+stime seconds of kubo A, of our daemon, of the three garage processes",
            "kubo_profile": "test (loopback only, no bootstrap, no routing beyond the two nodes)",
        })
    }
}

/// Our daemon's figures from its `/metrics`: cluster calls for store
/// operations, cluster calls for none (`op="other"`, the presence filter's
/// own polling), and its filters' false positives.
fn daemon_figures(text: &str) -> (f64, f64, f64) {
    const NAME: &str = "garage_ipfs_cluster_calls_total{";
    let fps = measure::sum_metric(text, "garage_ipfs_filter_false_positives_total");
    let mut ops = 0.0;
    let mut other = 0.0;
    for line in text.lines().filter(|l| l.starts_with(NAME)) {
        let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if line.contains("op=\"other\"") {
            other += v;
        } else {
            ops += v;
        }
    }
    (ops, other, fps)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Records whether a workload's answer was right, or why it failed.
fn check(m: &mut Measure, result: anyhow::Result<bool>) {
    match result {
        Ok(ok) => m.correct = Some(ok),
        Err(e) => {
            m.correct = Some(false);
            m.note = Some(format!("{e:#}").chars().take(300).collect());
        }
    }
}

/// B wants `n` absent CIDs for a second each, 512 at once (under boxo's
/// 1024 queued wants per peer): how many it found (0 expected).
pub async fn flood(b: &KuboNode, n: usize) -> anyhow::Result<usize> {
    let api = b.api_url()?;
    let http = reqwest::Client::new();
    let cids: Vec<String> = (0..n)
        .map(|i| {
            let data = format!("absent block {i} {}", rand::random::<u64>());
            crate::cid::compute(0x55, 0x12, data.as_bytes()).map(|c| c.to_string())
        })
        .collect::<Result<_, _>>()?;
    let found: Vec<anyhow::Result<bool>> = futures::stream::iter(cids)
        .map(|cid| {
            let (http, api) = (http.clone(), api.clone());
            async move {
                let r = http
                    .post(format!("{api}/api/v0/block/stat?arg={cid}&timeout=1s"))
                    .send()
                    .await?;
                Ok(r.status().is_success())
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    let mut hits = 0;
    for f in found {
        hits += usize::from(f?);
    }
    Ok(hits)
}

/// The tables: one per workload, systems as rows.
pub fn tables(report: &Report) -> String {
    let mut out = String::new();
    for w in WORKLOADS {
        let Some(by) = report.results.get(w) else {
            continue;
        };
        let s3 = by.get(Kind::S3.name()).map(|m| m.seconds);
        let mut rows = vec![[
            "system",
            "seconds",
            "s3/this",
            "Garage req",
            "req/op",
            "background",
            "node RPCs",
            "CPU kubo",
            "CPU daemon",
            "CPU nodes",
            "correct",
        ]
        .map(String::from)
        .to_vec()];
        for k in Kind::ALL {
            let Some(m) = by.get(k.name()) else { continue };
            rows.push(vec![
                k.name().to_string(),
                format!("{:.2}", m.seconds),
                s3.filter(|_| m.seconds > 0.0)
                    .map(|s| format!("{:.2}x", s / m.seconds))
                    .unwrap_or_default(),
                format!("{:.0}", m.garage_requests),
                format!("{:.3}", m.garage_requests_per_op),
                format!("{:.0}", m.background_requests),
                format!("{:.0}", m.node_rpcs),
                format!("{:.2}", m.cpu_kubo),
                format!("{:.2}", m.cpu_daemon),
                format!("{:.2}", m.cpu_nodes),
                match m.correct {
                    Some(true) => "yes".into(),
                    Some(false) => format!("NO {}", m.note.as_deref().unwrap_or("")),
                    None => String::new(),
                },
            ]);
        }
        let ops = by.values().next().map(|m| m.ops).unwrap_or(0);
        out.push_str(&format!("\n{w} ({ops} ops)\n"));
        out.push_str(&super::report::format_table(&rows));
    }
    out
}
