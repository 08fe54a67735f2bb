//! `garage-ipfs nemesis`: a seed-reproducible fault-injection checker.
//!
//! Jepsen's method on our store: real processes (three Garage nodes, two
//! daemons, a CLI connector, admin jobs), clients that record every
//! operation's invocation and answer in a history, faults injected on a
//! schedule drawn from the seed (kills, pauses, partitions, clocks), then
//! every fault healed, a settle time, a read-back of every block through a
//! fresh connector and both daemons, and a checker (`check.rs`), written
//! apart from the store's code, that reads the history alone and reports
//! anomalies: lost writes, resurrections, false absents, stale presents,
//! corrupt reads, listings that miss live blocks, gc removing reachable
//! blocks. docs/NEMESIS.md says what each means and what a run covers.

pub mod check;
mod clients;
mod history;
mod schedule;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::json;

use crate::harness::{free_port, Cluster, DbEngine, Lifetime, Network, Peer, Ports, StartOptions};
use crate::store::GarageStore;
use crate::Connector;
use clients::{Client, Pool, Surface};
use history::{History, Outcome};
use schedule::{At, Fault, Job, Knobs, Schedule};
use world::World;

pub use check::Report;

/// The namespace every client shares.
const NAMESPACE: &str = "nemesis";

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Work directory (cluster, daemons' state, logs).
    pub dir: PathBuf,
    /// Where the history goes.
    pub history: PathBuf,
    pub seed: u64,
    /// How long the load and the faults run.
    pub duration: Duration,
    /// The settle time the checker allows a change to reach every daemon.
    pub settle: Duration,
    /// Blocks in the shared pool.
    pub pool: usize,
    /// gRPC clients per daemon (each daemon also gets one HTTP client;
    /// one CLI connector client runs beside them).
    pub grpc_clients: usize,
    /// Partitions (nodes and daemons in network namespaces; needs root).
    pub partitions: bool,
    /// Clock offsets (libfaketime).
    pub clocks: bool,
    pub fault_every: Duration,
    pub job_every: Duration,
    pub max_daemon_pause: Duration,
    pub max_job_pause: Duration,
    pub db_engine: Option<DbEngine>,
}

/// Runs the checker: the load under faults, the read-back, the check.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.partitions && unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "partitions put nodes and daemons in network namespaces, which needs root; \
             run as root or with --no-partitions"
        );
    }
    let faketime = if opts.clocks {
        Some(world::find_faketime()?)
    } else {
        None
    };
    let knobs = Knobs {
        duration_ms: opts.duration.as_millis() as u64,
        fault_every_ms: opts.fault_every.as_millis() as u64,
        job_every_ms: opts.job_every.as_millis() as u64,
        partitions: opts.partitions,
        clocks: opts.clocks,
        max_daemon_pause_ms: opts.max_daemon_pause.as_millis() as u64,
        max_job_pause_ms: opts.max_job_pause.as_millis() as u64,
    };
    let schedule = Schedule::new(opts.seed, &knobs);
    eprintln!(
        "nemesis: seed {}, {:?} of load, {} faults and {} admin jobs scheduled, settle {:?}",
        opts.seed,
        opts.duration,
        schedule.faults.len(),
        schedule.jobs.len(),
        opts.settle
    );
    std::fs::create_dir_all(&opts.dir)?;
    let cluster = Cluster::start(StartOptions {
        dir: opts.dir.join("cluster"),
        ports: Ports::Free,
        lifetime: Lifetime::Attached,
        nodelay: false,
        network: if opts.partitions {
            Network::Namespaces
        } else {
            Network::Loopback
        },
        db_engine: opts.db_engine,
        log_table_sync: false,
    })
    .await
    .context("starting the cluster")?;
    let cli_conn = Connector::connect(cluster.connector_config(opts.dir.join("cli"), free_port()?))
        .await
        .context("joining the cluster (CLI connector)")?;
    let cli_store = GarageStore::new(cli_conn.clone());
    let cli_ns = cli_store.create_namespace(NAMESPACE).await?;
    let world = Arc::new(World::start(cluster.clone(), &opts.dir, faketime, NAMESPACE).await?);
    eprintln!("nemesis: cluster and daemons A, B up");

    // An operation whose answer never came may take effect until the
    // longest pause of a daemon ends and its requests to Garage time out.
    let info_extra = opts.max_daemon_pause + Duration::from_secs(90);
    let h = Arc::new(History::create(
        &opts.history,
        json!({
            "seed": opts.seed,
            "settle_ms": opts.settle.as_secs_f64() * 1e3,
            "info_extra_ms": info_extra.as_secs_f64() * 1e3,
            "namespace": NAMESPACE,
            "schedule": schedule,
        }),
    )?);
    let pool = Arc::new(Pool::new(opts.seed, opts.pool));

    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = Vec::new();
    let mut n = 0;
    let mut client = |via: String, surface: Surface| {
        let c = Client {
            name: format!("c{n}"),
            via,
            surface,
            rng: SmallRng::seed_from_u64(opts.seed.wrapping_add(1 + n as u64)),
            token: world.token.clone(),
            namespace: NAMESPACE.into(),
        };
        n += 1;
        c
    };
    let http = reqwest::Client::builder()
        .timeout(clients::REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let mut all = Vec::new();
    for d in &world.daemons {
        for _ in 0..opts.grpc_clients {
            all.push(client(
                format!("{}-grpc", d.name),
                Surface::Grpc {
                    client: grpc_client(&d.grpc)?,
                },
            ));
        }
        all.push(client(
            format!("{}-http", d.name),
            Surface::Http {
                http: http.clone(),
                rpc: d.rpc.clone(),
                gateway: d.gateway.clone(),
            },
        ));
    }
    all.push(client("cli".into(), Surface::Local(cli_ns.clone())));
    for c in all {
        tasks.push(tokio::spawn(c.run(h.clone(), pool.clone(), deadline)));
    }
    let nemesis = tokio::spawn(run_faults(
        world.clone(),
        h.clone(),
        schedule.faults.clone(),
        start,
        deadline,
    ));
    let jobs = tokio::spawn(run_jobs(
        world.clone(),
        h.clone(),
        pool.clone(),
        schedule.jobs.clone(),
        start,
        deadline,
        opts.max_job_pause,
    ));
    let progress = tokio::spawn({
        let h = h.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                eprintln!(
                    "nemesis: {:>4}s, {} operations",
                    start.elapsed().as_secs(),
                    h.operations()
                );
            }
        }
    });
    for t in tasks {
        t.await.context("a client panicked")?;
    }
    nemesis.await.context("the nemesis panicked")??;
    jobs.await.context("the job runner panicked")??;
    progress.abort();

    eprintln!("nemesis: load done; healing everything");
    heal(&world).await?;
    h.nemesis("heal", "all", "every fault undone, clocks true");
    tokio::time::sleep(opts.settle + Duration::from_secs(1)).await;

    eprintln!("nemesis: reading back every block through a fresh connector and both daemons");
    final_reads(&world, &h, &pool, opts).await?;
    h.finish()?;
    world.stop();
    cli_conn.shutdown();
    let report = check::check_file(&opts.history)
        .with_context(|| format!("checking {}", opts.history.display()))?;
    Ok(report)
}

fn grpc_client(
    url: &str,
) -> anyhow::Result<
    crate::api::grpc::pb::blockstore_client::BlockstoreClient<tonic::transport::Channel>,
> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(clients::REQUEST_TIMEOUT)
        .connect_lazy();
    Ok(crate::api::grpc::pb::blockstore_client::BlockstoreClient::new(ch))
}

async fn sleep_until(start: Instant, at_ms: u64) {
    tokio::time::sleep_until((start + Duration::from_millis(at_ms)).into()).await;
}

/// Applies the faults one after another, each undone before the next.
async fn run_faults(
    world: Arc<World>,
    h: Arc<History>,
    faults: Vec<At<Fault>>,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<()> {
    let lab = world.cluster.net();
    let node_peer = |n: usize| Peer::Node(n + 1);
    for At { at_ms, what } in faults {
        sleep_until(start, at_ms).await;
        if Instant::now() >= deadline {
            break;
        }
        let detail = serde_json::to_string(&what)?;
        let hold = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        match what {
            Fault::KillDaemon { daemon, ms } => {
                let name = world.daemons[daemon].name;
                world.kill_daemon(daemon);
                h.nemesis("kill-daemon", name, &detail);
                hold(ms).await;
                world.spawn_daemon(daemon)?;
                h.nemesis("restart-daemon", name, "");
            }
            Fault::PauseDaemon { daemon, ms } => {
                let name = world.daemons[daemon].name;
                world.signal_daemon(daemon, libc::SIGSTOP);
                h.nemesis("pause-daemon", name, &detail);
                hold(ms).await;
                world.signal_daemon(daemon, libc::SIGCONT);
                h.nemesis("resume-daemon", name, "");
            }
            Fault::ClockDaemon { daemon, offset_s } => {
                let d = &world.daemons[daemon];
                if let Some(clock) = &d.clock {
                    clock.set(offset_s)?;
                    h.nemesis("clock-daemon", d.name, &detail);
                }
            }
            Fault::KillNode { node, ms } => {
                world.cluster.kill_node(node);
                h.nemesis("kill-node", &format!("node{}", node + 1), &detail);
                hold(ms).await;
                world.cluster.start_node(node)?;
                h.nemesis("restart-node", &format!("node{}", node + 1), "");
            }
            Fault::PauseNode { node, ms } => {
                if let Some(pid) = world.cluster.node_pid(node) {
                    let _ = crate::harness::process::signal(pid, libc::SIGSTOP);
                    h.nemesis("pause-node", &format!("node{}", node + 1), &detail);
                    hold(ms).await;
                    let _ = crate::harness::process::signal(pid, libc::SIGCONT);
                    h.nemesis("resume-node", &format!("node{}", node + 1), "");
                }
            }
            Fault::IsolateNode { node, ms } => {
                let lab = lab.context("partitions need namespaces")?;
                lab.isolate(node + 1)?;
                h.nemesis("partition", &format!("node{}", node + 1), &detail);
                hold(ms).await;
                lab.heal_all()?;
                h.nemesis("heal", "all", "");
            }
            Fault::DaemonMinority { daemon, keep, ms } => {
                let lab = lab.context("partitions need namespaces")?;
                for n in (0..3).filter(|&n| n != keep) {
                    lab.cut(world.daemon_peer(daemon), node_peer(n))?;
                }
                h.nemesis("partition", world.daemons[daemon].name, &detail);
                hold(ms).await;
                lab.heal_all()?;
                h.nemesis("heal", "all", "");
            }
            Fault::SplitNodes { a, b, ms } => {
                let lab = lab.context("partitions need namespaces")?;
                lab.cut(node_peer(a), node_peer(b))?;
                h.nemesis("partition", "nodes", &detail);
                hold(ms).await;
                lab.heal_all()?;
                h.nemesis("heal", "all", "");
            }
            Fault::HostFromNode { node, ms } => {
                let lab = lab.context("partitions need namespaces")?;
                lab.cut(Peer::Host, node_peer(node))?;
                h.nemesis("partition", "host", &detail);
                hold(ms).await;
                lab.heal_all()?;
                h.nemesis("heal", "all", "");
            }
        }
    }
    Ok(())
}

/// Starts the admin jobs at their times; waits for the last to end.
async fn run_jobs(
    world: Arc<World>,
    h: Arc<History>,
    pool: Arc<Pool>,
    jobs: Vec<At<Job>>,
    start: Instant,
    deadline: Instant,
    max_pause: Duration,
) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for (n, At { at_ms, what }) in jobs.into_iter().enumerate() {
        sleep_until(start, at_ms).await;
        if Instant::now() >= deadline {
            break;
        }
        match what {
            Job::Compact {
                clock_s,
                twin_clock_s,
                break_lease,
                kill_after_ms,
                pause_ms,
            } => {
                let mut args = vec!["compact", "--namespace", NAMESPACE, "--json"];
                if break_lease {
                    args.push("--break-lease");
                }
                let clocks = std::iter::once(clock_s).chain(twin_clock_s);
                for (i, clock) in clocks.enumerate() {
                    let fields = json!({"clock_s": clock, "break_lease": break_lease});
                    // The twin is neither killed nor paused: it races.
                    let (kill, pause) = if i == 0 {
                        (kill_after_ms, pause_ms)
                    } else {
                        (None, None)
                    };
                    running.push(tokio::spawn(run_job(
                        world.clone(),
                        h.clone(),
                        format!("j{n}.{i}"),
                        "compact",
                        args.iter().map(|s| s.to_string()).collect(),
                        clock,
                        fields,
                        kill,
                        pause,
                    )));
                }
            }
            Job::Gc { clock_s } => {
                let (roots, protected) = pool.start_gc();
                if roots.is_empty() {
                    pool.end_gc();
                    h.nemesis("job-skipped", &format!("j{n}"), "gc: no kept DAG yet");
                    continue;
                }
                let file = world.dir.join(format!("keep-{n}.txt"));
                let text: String = roots.iter().map(|c| format!("{c}\n")).collect();
                std::fs::write(&file, text)?;
                let args = vec![
                    "gc".to_string(),
                    "--namespace".into(),
                    NAMESPACE.into(),
                    "--keep".into(),
                    file.display().to_string(),
                    "--json".into(),
                ];
                // Counted as running from before its roots were chosen
                // until it ends (clients.rs, `Pool::gcs_running`).
                let pool = pool.clone();
                let job = run_job(
                    world.clone(),
                    h.clone(),
                    format!("j{n}"),
                    "gc",
                    args,
                    clock_s,
                    json!({"clock_s": clock_s, "protected": protected}),
                    None,
                    None,
                );
                running.push(tokio::spawn(async move {
                    let r = job.await;
                    pool.end_gc();
                    r
                }));
            }
            Job::Verify | Job::Repair => {
                let f = if matches!(what, Job::Verify) {
                    "verify"
                } else {
                    "repair"
                };
                let args = vec![
                    f.to_string(),
                    "--namespace".into(),
                    NAMESPACE.into(),
                    "--json".into(),
                ];
                running.push(tokio::spawn(run_job(
                    world.clone(),
                    h.clone(),
                    format!("j{n}"),
                    f,
                    args,
                    0,
                    json!({}),
                    None,
                    None,
                )));
            }
        }
    }
    // A job still running at the end gets its time (a paused compactor's
    // pause included), then is killed.
    let limit = max_pause + Duration::from_secs(180);
    for r in running {
        match tokio::time::timeout(limit, r).await {
            Ok(joined) => joined.context("a job panicked")??,
            Err(_) => anyhow::bail!("an admin job did not end within {limit:?}"),
        }
    }
    Ok(())
}

/// One admin job's process, from start to exit, recorded as an operation.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    world: Arc<World>,
    h: Arc<History>,
    proc: String,
    f: &'static str,
    args: Vec<String>,
    clock_s: i64,
    fields: serde_json::Value,
    kill_after_ms: Option<u64>,
    pause_ms: Option<u64>,
) -> anyhow::Result<()> {
    let Some(slot) = world.take_job_slot() else {
        h.nemesis("job-skipped", &proc, format!("{f}: every job slot busy"));
        return Ok(());
    };
    let result = async {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = world.job_command(slot, clock_s, &argv)?;
        let op = h.invoke(&proc, "cli", f, false, fields);
        let mut child = match crate::harness::process::spawn_attached(cmd) {
            Ok(c) => c,
            Err(e) => {
                h.error(op, Outcome::Fail, e);
                return anyhow::Ok(());
            }
        };
        let pid = child.id();
        let stdout = child.stdout.take();
        let waiter = tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            if let Some(mut s) = stdout {
                use std::io::Read;
                let _ = s.read_to_string(&mut out);
            }
            (child.wait(), out)
        });
        let signals = {
            let h = h.clone();
            let proc = proc.clone();
            async move {
                if let Some(ms) = kill_after_ms {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = crate::harness::process::signal(pid, libc::SIGKILL);
                    h.nemesis("kill-job", &proc, format!("after {ms} ms"));
                } else if let Some(ms) = pause_ms {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if crate::harness::process::signal(pid, libc::SIGSTOP).is_ok() {
                        h.nemesis("pause-job", &proc, format!("{ms} ms"));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let _ = crate::harness::process::signal(pid, libc::SIGCONT);
                        h.nemesis("resume-job", &proc, "");
                    }
                }
                std::future::pending::<()>().await
            }
        };
        let (status, out) = tokio::select! {
            r = waiter => r?,
            () = signals => unreachable!("pending"),
        };
        let status = status?;
        let summary: serde_json::Value =
            serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        match status.code() {
            Some(code) if code == 0 || (code == 1 && f == "verify") => {
                let mut answer = json!({"exit": code, "summary": summary});
                if f == "gc" {
                    let removed = summary["removed"].as_array().map_or(0, Vec::len);
                    answer["removed"] = removed.into();
                }
                h.complete(op, Outcome::Ok, answer);
            }
            code => h.complete(
                op,
                Outcome::Info,
                json!({"exit": code, "error": format!("{status} (log: admin-{slot}.log)")}),
            ),
        }
        anyhow::Ok(())
    }
    .await;
    world.free_job_slot(slot);
    result
}

/// Undoes every fault: links healed, processes resumed, the dead
/// restarted, clocks true; then waits for the cluster and the daemons.
async fn heal(world: &World) -> anyhow::Result<()> {
    if let Some(lab) = world.cluster.net() {
        lab.heal_all()?;
    }
    for n in 0..3 {
        match world.cluster.node_pid(n) {
            Some(pid) => {
                let _ = crate::harness::process::signal(pid, libc::SIGCONT);
            }
            None => world.cluster.start_node(n)?,
        }
    }
    for d in 0..world.daemons.len() {
        if let Some(clock) = &world.daemons[d].clock {
            clock.set(0)?;
        }
        world.signal_daemon(d, libc::SIGCONT);
        if let Some(status) = world.daemon_exited(d) {
            anyhow::bail!(
                "daemon {} exited by itself ({status}); see {}",
                world.daemons[d].name,
                world
                    .dir
                    .join(format!("daemon-{}.log", world.daemons[d].name))
                    .display()
            );
        }
    }
    world.cluster.wait_healthy(Duration::from_secs(120)).await?;
    for d in 0..world.daemons.len() {
        world.wait_daemon(d, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// The read-back: listings through a fresh connector and both daemons,
/// then every block ever written, a get through the fresh connector and
/// a has through each daemon.
async fn final_reads(
    world: &World,
    h: &History,
    pool: &Pool,
    opts: &Options,
) -> anyhow::Result<()> {
    let conn = Connector::connect(
        world
            .cluster
            .connector_config(opts.dir.join("fresh"), free_port()?),
    )
    .await
    .context("joining the cluster for the read-back")?;
    let store = GarageStore::new(conn.clone());
    let ns = store.namespace(NAMESPACE)?;
    let make = |name: String, via: String, surface: Surface| Client {
        name,
        via,
        surface,
        rng: SmallRng::seed_from_u64(0),
        token: world.token.clone(),
        namespace: NAMESPACE.into(),
    };
    let mut readers = Vec::new();
    for w in 0..32 {
        let mut set = vec![make(
            format!("f{w}"),
            "fresh".into(),
            Surface::Local(ns.clone()),
        )];
        for d in &world.daemons {
            set.push(make(
                format!("f{w}"),
                format!("{}-grpc", d.name),
                Surface::Grpc {
                    client: grpc_client(&d.grpc)?,
                },
            ));
        }
        readers.push(set);
    }
    for c in readers[0].iter_mut() {
        c.list(h, true).await;
    }
    let mut keys: Vec<cid::Cid> = pool.blocks.iter().map(|(c, _)| *c).collect();
    for k in pool.dag_keys.lock().unwrap().iter() {
        keys.push(crate::cid::parse(k)?);
    }
    let keys = Arc::new(std::sync::Mutex::new(keys));
    let workers = readers.into_iter().map(|mut set| {
        let keys = keys.clone();
        async move {
            loop {
                let Some(cid) = keys.lock().unwrap().pop() else {
                    break;
                };
                // The fresh connector's answer is the one the checker
                // judges the data by: asked again (a read changes
                // nothing) until it comes, a few times.
                for _ in 0..5 {
                    if set[0].get(h, &cid, true).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                for c in set[1..].iter_mut() {
                    c.has(h, &cid, true).await;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    conn.shutdown();
    Ok(())
}
