//! `garage-ipfs soak`: sustained mixed load through the daemon's HTTP and
//! gRPC surfaces, on a fresh three-node cluster, checking every answer.
//!
//! Each client owns the blocks it writes, so it knows what every answer
//! must be: a get or has of a block whose put was acknowledged must find
//! it, intact (checked against its CID by the client itself); one whose
//! delete was acknowledged must be gone. Anything else is a *violation*.
//! Errors (overload, timeouts) are counted by class: they are allowed, a
//! wrong answer is not, and more errors than `max_errors` (0 unless
//! given) fail the soak. At the end every block still held is read back
//! through a fresh connector with no cache and no presence filter, so
//! that the cluster answers, not the daemon's memory; and every recently
//! deleted one must be absent.
//!
//! Clients keep only CIDs, not bytes (a get is checked by hashing), and
//! each holds at most `live_cap` blocks (beyond it, puts turn into
//! deletes), so a long soak reaches a steady state: the process's resident
//! memory must then stay under the stated bound.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::api::grpc::pb;
use crate::api::{self, ApiOptions, Listeners};
use crate::cid::{self as cidutil, codec};
use crate::config::{ApiConfig, Secret};
use crate::harness::{free_port, Cluster, ClusterDisk};
use crate::store::{BlockStore, GarageStore};
use crate::Connector;

/// The namespace the soak writes.
const NAMESPACE: &str = "soak";
/// Recently deleted blocks each client remembers, to check they stay gone.
const DELETED_KEPT: usize = 256;

/// How to soak.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster directory.
    pub dir: PathBuf,
    /// Concurrent clients; even ones use HTTP, odd ones gRPC.
    pub clients: usize,
    /// How long the load runs.
    pub duration: Duration,
    /// Most blocks one client holds at once.
    pub live_cap: usize,
    /// The resident-memory bound of this process (daemon and clients).
    pub max_rss_bytes: u64,
    /// Run the nodes with the TCP_NODELAY shim.
    pub nodelay: bool,
    /// The nodes\' metadata engine (`None`: what `dir` holds, else LMDB).
    pub db_engine: Option<crate::harness::DbEngine>,
    /// Print progress every this often.
    pub progress_every: Duration,
    /// Errors (all classes together) a passing soak may have. On a healthy
    /// cluster that is not overloaded none is expected: every request gets
    /// its answer well within the clients' 30 s timeout.
    pub max_errors: u64,
}

/// Counts of one operation on one surface.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    /// Answered as expected.
    pub ok: u64,
    /// Failed with an error (see the error classes).
    pub errors: u64,
}

/// What a soak found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Clients and their surfaces.
    pub clients: usize,
    /// Seconds of load.
    pub seconds: f64,
    /// Per `surface op`: successes and errors.
    pub ops: BTreeMap<String, OpCounts>,
    /// Operations per second, all kinds.
    pub ops_per_sec: f64,
    /// Errors by class (`surface op: what`).
    pub errors: BTreeMap<String, u64>,
    /// All errors together.
    pub errors_total: u64,
    /// The bound on them.
    pub max_errors: u64,
    /// Puts acknowledged.
    pub puts_acknowledged: u64,
    /// Deletes acknowledged.
    pub deletes_acknowledged: u64,
    /// Wrong answers during the load: an acknowledged block missing or
    /// altered, a deleted block present (the goal: none).
    pub violations: Vec<String>,
    /// Blocks the clients held at the end (acknowledged puts, less
    /// acknowledged deletes and deletes whose outcome is unknown).
    pub final_held: u64,
    /// Of those, the blocks read back at the end through a fresh connector
    /// (no cache, no filter) and found intact (hashed against their CID).
    pub final_present_verified: u64,
    /// Recently deleted blocks the clients remember.
    pub final_deleted_checked: u64,
    /// Of those, the ones the fresh connector found absent.
    pub final_absent_verified: u64,
    /// Acknowledged blocks lost (or altered) at the end (the goal: none).
    pub final_lost: Vec<String>,
    /// Highest resident memory of this process during the soak.
    pub peak_rss_bytes: u64,
    /// Its resident memory when the load started (daemon warmed up).
    pub start_rss_bytes: u64,
    /// The bound.
    pub max_rss_bytes: u64,
    /// The cluster's block storage when the load started.
    pub disk_start: ClusterDisk,
    /// The most it held at a sample (once a minute, and at the end).
    pub disk_peak_bytes: u64,
    /// When the load ended. Garage frees deleted blocks' space later,
    /// from its resync queue: a queue that grows through a long soak
    /// means the space of deletes comes back more slowly than they come.
    pub disk_end: ClusterDisk,
    /// No violation, nothing lost, errors and memory under their bounds.
    pub passed: bool,
}

/// The resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Runs a soak: cluster, daemon, clients, final check. The cluster's nodes
/// stop when this returns.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.clients > 0, "--clients must be at least 1");
    eprintln!(
        "soak: starting a three-node garage cluster in {}",
        opts.dir.display()
    );
    Cluster::refuse_running(&opts.dir)?;
    let cluster = Cluster::start_own(&opts.dir, opts.nodelay, opts.db_engine)
        .await
        .context("starting the soak cluster")?;
    let conn =
        Connector::connect(cluster.connector_config(opts.dir.join("connector"), free_port()?))
            .await
            .context("joining the soak cluster")?;
    let store = GarageStore::with_filters(conn.clone());
    store.create_namespace(NAMESPACE).await?;
    let result = soak_daemon(opts, store.clone(), cluster.clone()).await;
    let result = match result {
        Ok(load) => read_back(opts, &cluster, load).await,
        Err(e) => Err(e),
    };
    conn.shutdown();
    drop(store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(cluster);
    result
}

/// What the load left: the report so far, and the blocks to check.
struct Load {
    report: Report,
    held: Vec<Cid>,
    gone: Vec<Cid>,
}

/// The load through the daemon's surfaces, served by `store`.
async fn soak_daemon(
    opts: &Options,
    store: Arc<GarageStore>,
    cluster: Arc<Cluster>,
) -> anyhow::Result<Load> {
    let token = hex::encode(rand::random::<[u8; 16]>());
    let api_config = ApiConfig {
        namespace: NAMESPACE.into(),
        write_token: Some(Secret::new(token.clone())),
        ..ApiConfig::default()
    };
    let options = ApiOptions::from_config(&api_config, [9; 32])?;
    let listeners = Listeners::bind_loopback().await?;
    let [gw, rpc, grpc] = listeners.addrs()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listeners, store.clone(), options, async {
        let _ = stop_rx.await;
    }));
    let targets = Targets {
        // Idle pooled connections are dropped before the daemon would close
        // them (it closes a connection idle for `header_read_timeout`, 10 s
        // by default): a request sent on a connection the server is closing
        // at that moment fails in transport, a client's race, not an answer
        // of ours (one such error in 490 000 operations of a 10-min soak).
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(
                api_config.header_read_timeout_secs.max(2) / 2,
            ))
            .build()?,
        gateway: format!("http://{gw}"),
        rpc: format!("http://{rpc}/api/v0"),
        grpc: format!("http://{grpc}"),
        token,
    };

    let shared = Arc::new(Shared::default());
    let disk_start = sample_disk(&cluster, &shared).await;
    let start_rss = rss_bytes();
    shared.peak_rss.store(start_rss, Ordering::Relaxed);
    eprintln!(
        "soak: {} clients ({} HTTP, {} gRPC) for {:?}; resident memory {} MiB at start, bound {} MiB",
        opts.clients,
        opts.clients.div_ceil(2),
        opts.clients / 2,
        opts.duration,
        start_rss >> 20,
        opts.max_rss_bytes >> 20
    );
    let started = Instant::now();
    let deadline = started + opts.duration;
    let monitor = tokio::spawn(monitor(
        shared.clone(),
        cluster.clone(),
        deadline,
        opts.progress_every,
    ));
    let mut clients = Vec::new();
    for id in 0..opts.clients {
        let (targets, shared) = (targets.clone(), shared.clone());
        let live_cap = opts.live_cap;
        clients.push(tokio::spawn(async move {
            client(id, targets, shared, deadline, live_cap).await
        }));
    }
    let mut held = Vec::new();
    let mut gone = Vec::new();
    for c in clients {
        let (live, deleted) = c.await.context("a soak client panicked")??;
        held.extend(live);
        gone.extend(deleted);
    }
    let seconds = started.elapsed().as_secs_f64();
    monitor.abort();
    let disk_end = sample_disk(&cluster, &shared).await;
    let _ = stop_tx.send(());
    server.await??;

    let ops = shared.ops.lock().unwrap().clone();
    let total_ops: u64 = ops.values().map(|c| c.ok + c.errors).sum();
    let violations = shared.violations.lock().unwrap().clone();
    let peak = shared.peak_rss.load(Ordering::Relaxed).max(rss_bytes());
    let errors = shared.errors.lock().unwrap().clone();
    let report = Report {
        clients: opts.clients,
        seconds,
        ops_per_sec: total_ops as f64 / seconds,
        ops,
        errors_total: errors.values().sum(),
        max_errors: opts.max_errors,
        errors,
        puts_acknowledged: shared.puts.load(Ordering::Relaxed),
        deletes_acknowledged: shared.deletes.load(Ordering::Relaxed),
        violations,
        final_held: held.len() as u64,
        final_deleted_checked: gone.len() as u64,
        peak_rss_bytes: peak,
        start_rss_bytes: start_rss,
        max_rss_bytes: opts.max_rss_bytes,
        disk_start,
        disk_peak_bytes: shared.peak_disk.load(Ordering::Relaxed),
        disk_end,
        ..Report::default()
    };
    Ok(Load { report, held, gone })
}

/// Reads every held block back, and checks every remembered deleted one
/// is absent, through a connector of its own with no cache and no filter:
/// the daemon's store may still hold the entries it wrote (with the bytes
/// of small blocks), and a check answered from there would prove nothing
/// about the cluster. Then gives the verdict.
async fn read_back(opts: &Options, cluster: &Cluster, load: Load) -> anyhow::Result<Report> {
    let Load {
        mut report,
        held,
        gone,
    } = load;
    eprintln!(
        "soak: load done; reading back {} held blocks and checking {} deleted ones \
         through a fresh connector (no cache, no filter)",
        held.len(),
        gone.len()
    );
    let conn = Connector::connect(
        cluster.connector_config(opts.dir.join("connector-read-back"), free_port()?),
    )
    .await
    .context("joining the cluster for the read-back")?;
    let store = GarageStore::new(conn.clone());
    let ns = store.namespace(NAMESPACE)?;
    let checks = futures::stream::iter(
        held.iter()
            .map(|c| (c, true))
            .chain(gone.iter().map(|c| (c, false))),
    )
    .map(|(cid, present)| {
        let ns = ns.clone();
        async move {
            let got = ns.get(cid).await;
            let ok = match (&got, present) {
                (Ok(Some(data)), true) => cidutil::verify(cid, data).is_ok(),
                (Ok(None), false) => true,
                _ => false,
            };
            (cid, present, ok, got.err().map(|e| e.to_string()))
        }
    })
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    conn.shutdown();
    for (cid, present, ok, err) in checks {
        match (ok, present, err) {
            (true, true, _) => report.final_present_verified += 1,
            (true, false, _) => report.final_absent_verified += 1,
            (false, _, Some(e)) => report.final_lost.push(format!("{cid}: unreadable: {e}")),
            (false, true, None) => report.final_lost.push(format!(
                "{cid}: acknowledged put, not found or altered at the end"
            )),
            (false, false, None) => report
                .final_lost
                .push(format!("{cid}: acknowledged delete, present at the end")),
        }
    }
    report.passed = report.violations.is_empty()
        && report.final_lost.is_empty()
        && report.final_present_verified == report.final_held
        && report.final_absent_verified == report.final_deleted_checked
        && report.errors_total <= report.max_errors
        && report.peak_rss_bytes <= report.max_rss_bytes;
    Ok(report)
}

/// Where the clients send their requests.
#[derive(Clone)]
struct Targets {
    http: reqwest::Client,
    gateway: String,
    rpc: String,
    grpc: String,
    token: String,
}

#[derive(Default)]
struct Shared {
    ops: Mutex<BTreeMap<String, OpCounts>>,
    errors: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
    puts: AtomicU64,
    deletes: AtomicU64,
    done: AtomicU64,
    peak_rss: AtomicU64,
    peak_disk: AtomicU64,
    last_disk: Mutex<Option<ClusterDisk>>,
}

/// Samples the cluster's disk off the runtime's threads; keeps the peak
/// and the latest sample.
async fn sample_disk(cluster: &Arc<Cluster>, shared: &Shared) -> ClusterDisk {
    let c = cluster.clone();
    let disk = tokio::task::spawn_blocking(move || ClusterDisk::sample(&c))
        .await
        .unwrap_or_default();
    shared.peak_disk.fetch_max(disk.bytes, Ordering::Relaxed);
    *shared.last_disk.lock().unwrap() = Some(disk);
    disk
}

/// How often the monitor samples the cluster's disk.
const DISK_EVERY: Duration = Duration::from_secs(60);

impl Shared {
    fn count(&self, surface: &str, op: &str, outcome: &Result<(), String>) {
        let key = format!("{surface} {op}");
        let mut ops = self.ops.lock().unwrap();
        let c = ops.entry(key.clone()).or_default();
        match outcome {
            Ok(()) => c.ok += 1,
            Err(class) => {
                c.errors += 1;
                *self
                    .errors
                    .lock()
                    .unwrap()
                    .entry(format!("{key}: {class}"))
                    .or_default() += 1;
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn violation(&self, what: String) {
        tracing::error!("soak violation: {what}");
        let mut v = self.violations.lock().unwrap();
        if v.len() < 100 {
            v.push(what);
        }
    }
}

/// Samples resident memory every 250 ms and the cluster's disk every
/// minute; prints progress.
async fn monitor(shared: Arc<Shared>, cluster: Arc<Cluster>, deadline: Instant, every: Duration) {
    let mut last_print = Instant::now();
    let mut last_disk = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rss = rss_bytes();
        shared.peak_rss.fetch_max(rss, Ordering::Relaxed);
        if last_disk.elapsed() >= DISK_EVERY {
            last_disk = Instant::now();
            sample_disk(&cluster, &shared).await;
        }
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let errors: u64 = shared.errors.lock().unwrap().values().sum();
            let disk = shared.last_disk.lock().unwrap().unwrap_or_default();
            eprintln!(
                "soak: {} ops, {} errors, {} violations, rss {} MiB, {}s left; \
                 cluster: {} block files, {} MiB, resync queue {}",
                shared.done.load(Ordering::Relaxed),
                errors,
                shared.violations.lock().unwrap().len(),
                rss >> 20,
                deadline.saturating_duration_since(Instant::now()).as_secs(),
                disk.block_files,
                disk.bytes >> 20,
                disk.resync_queue_text(),
            );
        }
    }
}

/// One client's view of its own blocks.
struct Client {
    id: usize,
    rng: SmallRng,
    live: Vec<Cid>,
    deleted: VecDeque<Cid>,
    surface: Surface,
}

enum Surface {
    Http(Targets),
    Grpc(
        pb::blockstore_client::BlockstoreClient<tonic::transport::Channel>,
        String,
    ),
}

impl Surface {
    fn name(&self) -> &'static str {
        match self {
            Surface::Http(_) => "http",
            Surface::Grpc(..) => "grpc",
        }
    }
}

/// The answer to a read: found with these bytes (for has: any), or not.
type Found = Option<Bytes>;

async fn client(
    id: usize,
    targets: Targets,
    shared: Arc<Shared>,
    deadline: Instant,
    live_cap: usize,
) -> anyhow::Result<(Vec<Cid>, Vec<Cid>)> {
    let surface = if id % 2 == 0 {
        Surface::Http(targets)
    } else {
        let channel = tonic::transport::Endpoint::from_shared(targets.grpc.clone())?
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .context("connecting the gRPC client")?;
        Surface::Grpc(
            pb::blockstore_client::BlockstoreClient::new(channel),
            targets.token,
        )
    };
    let mut c = Client {
        id,
        rng: SmallRng::seed_from_u64(id as u64 ^ rand::random::<u64>()),
        live: Vec::new(),
        deleted: VecDeque::new(),
        surface,
    };
    while Instant::now() < deadline {
        let roll = c.rng.random_range(0..100);
        if c.live.is_empty() || (roll < 35 && c.live.len() < live_cap) {
            c.put(&shared).await;
        } else if !(35..90).contains(&roll) {
            c.delete(&shared).await;
        } else if roll < 65 {
            c.get(&shared).await;
        } else {
            c.has(&shared).await;
        }
    }
    Ok((c.live, c.deleted.into()))
}

impl Client {
    fn new_block(&mut self) -> (Cid, Bytes) {
        // Mostly small blocks (stored inline in the index), some large.
        let size = if self.rng.random_bool(0.8) {
            self.rng.random_range(64..=3072)
        } else {
            self.rng.random_range(4096..=262_144)
        };
        let mut data = vec![0u8; size];
        self.rng.fill_bytes(&mut data);
        let cid = cidutil::compute(codec::RAW, 0x12, &data).expect("sha2-256 is supported");
        (cid, Bytes::from(data))
    }

    async fn put(&mut self, shared: &Shared) {
        let (cid, data) = self.new_block();
        let outcome = match &mut self.surface {
            Surface::Http(t) => {
                let form = reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(data.to_vec()).file_name("b"),
                );
                let sent = t
                    .http
                    .post(format!("{}/block/put?mhtype=sha2-256", t.rpc))
                    .bearer_auth(&t.token)
                    .multipart(form)
                    .send()
                    .await;
                match http_answer(sent).await {
                    Ok(body) if body.contains(&cid.to_string()) => Ok(()),
                    // A success that names another block is a wrong answer,
                    // not an error: the block may or may not be stored.
                    Ok(body) => {
                        shared.violation(format!(
                            "client {}: block/put of {cid} answered {}",
                            self.id,
                            body.trim()
                        ));
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Surface::Grpc(g, token) => {
                let req = authorized(
                    pb::PutRequest {
                        namespace: NAMESPACE.into(),
                        cid: cid.to_string(),
                        data: data.to_vec(),
                    },
                    token,
                );
                g.put(req).await.map(|_| ()).map_err(grpc_class)
            }
        };
        if outcome.is_ok() {
            shared.puts.fetch_add(1, Ordering::Relaxed);
            self.live.push(cid);
        }
        shared.count(self.surface.name(), "put", &outcome);
    }

    async fn delete(&mut self, shared: &Shared) {
        let i = self.rng.random_range(0..self.live.len());
        let cid = self.live.swap_remove(i);
        let outcome = match &mut self.surface {
            Surface::Http(t) => {
                let sent = t
                    .http
                    .post(format!("{}/block/rm?arg={cid}", t.rpc))
                    .bearer_auth(&t.token)
                    .send()
                    .await;
                match http_answer(sent).await {
                    Ok(body) if body.contains("\"Error\"") => {
                        Err(format!("refused: {}", body.trim()))
                    }
                    Ok(_) => Ok(true),
                    Err(e) => Err(e),
                }
            }
            Surface::Grpc(g, token) => {
                let req = authorized(
                    pb::DeleteRequest {
                        namespace: NAMESPACE.into(),
                        cid: cid.to_string(),
                    },
                    token,
                );
                g.delete(req)
                    .await
                    .map(|r| r.into_inner().deleted)
                    .map_err(grpc_class)
            }
        };
        let outcome = match outcome {
            Ok(true) => {
                shared.deletes.fetch_add(1, Ordering::Relaxed);
                self.deleted.push_back(cid);
                if self.deleted.len() > DELETED_KEPT {
                    self.deleted.pop_front();
                }
                Ok(())
            }
            Ok(false) => {
                shared.violation(format!(
                    "client {}: delete of acknowledged {cid} found nothing to delete",
                    self.id
                ));
                Ok(())
            }
            // Unknown whether it happened: the block is no longer tracked.
            Err(e) => Err(e),
        };
        shared.count(self.surface.name(), "delete", &outcome);
    }

    /// A block to read: mostly a held one, sometimes a deleted one.
    fn pick(&mut self) -> (Cid, bool) {
        if !self.deleted.is_empty() && self.rng.random_bool(0.2) {
            let i = self.rng.random_range(0..self.deleted.len());
            (self.deleted[i], false)
        } else {
            let i = self.rng.random_range(0..self.live.len());
            (self.live[i], true)
        }
    }

    async fn get(&mut self, shared: &Shared) {
        let (cid, present) = self.pick();
        let answer = self.read(&cid, false).await;
        self.check(shared, "get", &cid, present, answer);
    }

    async fn has(&mut self, shared: &Shared) {
        let (cid, present) = self.pick();
        let answer = self.read(&cid, true).await;
        self.check(shared, "has", &cid, present, answer);
    }

    fn check(
        &self,
        shared: &Shared,
        op: &str,
        cid: &Cid,
        present: bool,
        answer: Result<Found, String>,
    ) {
        let outcome = answer.map(|found| match (found, present) {
            (Some(data), true) => {
                if op == "get" && cidutil::verify(cid, &data).is_err() {
                    shared.violation(format!("client {}: {op} {cid}: wrong bytes", self.id));
                }
            }
            (None, true) => shared.violation(format!(
                "client {}: {op} {cid}: acknowledged put, answered absent",
                self.id
            )),
            (Some(_), false) => shared.violation(format!(
                "client {}: {op} {cid}: acknowledged delete, answered present",
                self.id
            )),
            (None, false) => (),
        });
        shared.count(self.surface.name(), op, &outcome);
    }

    /// Reads through the gateway (GET, or HEAD for has) or gRPC.
    async fn read(&mut self, cid: &Cid, head: bool) -> Result<Found, String> {
        match &mut self.surface {
            Surface::Http(t) => {
                let url = format!("{}/ipfs/{cid}?format=raw", t.gateway);
                let req = if head {
                    t.http.head(url)
                } else {
                    t.http.get(url)
                };
                let r = req.send().await.map_err(transport_class)?;
                match r.status().as_u16() {
                    200 => Ok(Some(r.bytes().await.map_err(transport_class)?)),
                    404 => Ok(None),
                    code => Err(format!("HTTP {code}")),
                }
            }
            Surface::Grpc(g, _) => {
                if head {
                    let r = g
                        .has(pb::HasRequest {
                            namespace: NAMESPACE.into(),
                            cid: cid.to_string(),
                        })
                        .await
                        .map_err(grpc_class)?;
                    Ok(r.into_inner().has.then(Bytes::new))
                } else {
                    let r = g
                        .get(pb::GetRequest {
                            namespace: NAMESPACE.into(),
                            cid: cid.to_string(),
                        })
                        .await;
                    match r {
                        Ok(r) => {
                            let r = r.into_inner();
                            Ok(r.found.then(|| Bytes::from(r.data)))
                        }
                        // The service's answer for an absent block.
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(grpc_class(s)),
                    }
                }
            }
        }
    }
}

fn authorized<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    req
}

async fn http_answer(sent: reqwest::Result<reqwest::Response>) -> Result<String, String> {
    let r = sent.map_err(transport_class)?;
    let status = r.status();
    if status.is_success() {
        r.text().await.map_err(transport_class)
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn transport_class(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        "transport error".into()
    }
}

fn grpc_class(s: tonic::Status) -> String {
    format!("{:?}", s.code())
}
