//! The processes of a nemesis run: the three Garage nodes (the harness's),
//! two daemons (`garage-ipfs serve`, each in a network namespace of its
//! own when partitions are on, so that one can be cut off alone), and the
//! admin jobs (`garage-ipfs compact | gc | verify | repair`), each a
//! process that can be killed, paused and given a clock of its own.
//!
//! Clocks: every daemon and job runs under libfaketime (Debian's
//! `faketime` package) with `FAKETIME_TIMESTAMP_FILE`, a file holding its
//! offset (`+7200`, `-90`), read again at most once a second, so a
//! running daemon's clock can be moved. The monotonic clock is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC`): timers and deadlines run true, the
//! wall clock (`SystemTime`, what leases, ages and nonces read) is skewed.

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::grpc::pb;
use crate::harness::{free_port, process, Cluster, Peer};

/// Where libfaketime lives on Debian and Ubuntu.
const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The lab index of daemon `d`'s network namespace (nodes are 1 to 3).
pub(super) fn daemon_lab_index(d: usize) -> usize {
    11 + d
}

/// libfaketime's library, or why it cannot be had.
pub(super) fn find_faketime() -> anyhow::Result<PathBuf> {
    FAKETIME_LIBS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "clock nemeses need libfaketime (Debian's package `faketime`: \
                 apt-get install faketime); looked in {}; or run with --no-clocks",
                FAKETIME_LIBS.join(", ")
            )
        })
}

/// A process's clock offset file.
#[derive(Debug, Clone)]
pub(super) struct Clock {
    file: PathBuf,
}

impl Clock {
    fn new(file: PathBuf) -> anyhow::Result<Self> {
        let c = Self { file };
        c.set(0)?;
        Ok(c)
    }

    /// Moves the clock to `offset_s` from true time.
    pub(super) fn set(&self, offset_s: i64) -> anyhow::Result<()> {
        let text = if offset_s < 0 {
            format!("-{}\n", -offset_s)
        } else {
            format!("+{offset_s}\n")
        };
        // Written through a rename: libfaketime must never read half a file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    fn env(&self, cmd: &mut Command, lib: &Path) {
        cmd.env("LD_PRELOAD", lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
}

/// One daemon's addresses and process.
pub(super) struct Daemon {
    pub(super) name: &'static str,
    config: PathBuf,
    log: PathBuf,
    pub(super) clock: Option<Clock>,
    child: Mutex<Option<Child>>,
    /// gRPC endpoint URL.
    pub(super) grpc: String,
    /// kubo RPC base URL (`…/api/v0`).
    pub(super) rpc: String,
    /// Gateway base URL.
    pub(super) gateway: String,
}

/// Everything a run started.
pub(super) struct World {
    pub(super) cluster: Arc<Cluster>,
    pub(super) dir: PathBuf,
    pub(super) exe: PathBuf,
    pub(super) faketime: Option<PathBuf>,
    pub(super) daemons: Vec<Daemon>,
    pub(super) token: String,
    pub(super) namespace: String,
    job_slots: Mutex<Vec<bool>>,
}

/// Admin jobs that can run at once (each has a state directory of its
/// own: admin commands lock theirs).
const JOB_SLOTS: usize = 6;

impl World {
    /// Writes the daemons' configs and starts them.
    pub(super) async fn start(
        cluster: Arc<Cluster>,
        dir: &Path,
        faketime: Option<PathBuf>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating garage-ipfs itself")?;
        let token = hex::encode(rand::random::<[u8; 16]>());
        let mut daemons = Vec::new();
        for (d, name) in ["A", "B"].into_iter().enumerate() {
            let ip = match cluster.net() {
                Some(lab) => lab.add_node(daemon_lab_index(d))?,
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            let state = dir.join(format!("daemon-{name}"));
            std::fs::create_dir_all(&state)?;
            let mut t = cluster.connector_toml(&state, 0);
            t.insert(
                "rpc_bind_addr".into(),
                SocketAddr::new(ip, free_port()?).to_string().into(),
            );
            let ports = [free_port()?, free_port()?, free_port()?];
            let mut api = toml::Table::new();
            api.insert("namespace".into(), namespace.into());
            api.insert("write_token".into(), token.clone().into());
            for (key, port) in ["gateway_addr", "rpc_addr", "grpc_addr"].iter().zip(ports) {
                api.insert((*key).into(), SocketAddr::new(ip, port).to_string().into());
            }
            t.insert("api".into(), api.into());
            let config = dir.join(format!("daemon-{name}.toml"));
            std::fs::write(&config, toml::to_string(&t)?)?;
            let clock = match &faketime {
                Some(_) => Some(Clock::new(dir.join(format!("daemon-{name}.clock")))?),
                None => None,
            };
            daemons.push(Daemon {
                name,
                config,
                log: dir.join(format!("daemon-{name}.log")),
                clock,
                child: Mutex::new(None),
                grpc: format!("http://{}", SocketAddr::new(ip, ports[2])),
                rpc: format!("http://{}/api/v0", SocketAddr::new(ip, ports[1])),
                gateway: format!("http://{}", SocketAddr::new(ip, ports[0])),
            });
        }
        let world = Self {
            cluster,
            dir: dir.to_owned(),
            exe,
            faketime,
            daemons,
            token,
            namespace: namespace.to_owned(),
            job_slots: Mutex::new(vec![false; JOB_SLOTS]),
        };
        for d in 0..world.daemons.len() {
            world.spawn_daemon(d)?;
        }
        for d in 0..world.daemons.len() {
            world.wait_daemon(d, Duration::from_secs(120)).await?;
        }
        Ok(world)
    }

    /// A command for `program` run where daemon or job `lab_index` runs.
    fn command(&self, lab_index: Option<usize>) -> Command {
        match (self.cluster.net(), lab_index) {
            (Some(lab), Some(i)) => lab.command(i, &self.exe),
            _ => Command::new(&self.exe),
        }
    }

    /// Starts daemon `d` (after a kill: with the same state directory).
    pub(super) fn spawn_daemon(&self, d: usize) -> anyhow::Result<()> {
        let daemon = &self.daemons[d];
        let mut cmd = self.command(Some(daemon_lab_index(d)));
        cmd.arg("serve").arg("--config").arg(&daemon.config);
        if let (Some(lib), Some(clock)) = (&self.faketime, &daemon.clock) {
            clock.env(&mut cmd, lib);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&daemon.log)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", "garage_ipfs=info,warn,r2d2=off")
            .env("NO_COLOR", "1");
        let child = process::spawn_attached(cmd)
            .with_context(|| format!("starting daemon {}", daemon.name))?;
        *daemon.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Waits until daemon `d` answers gRPC `Open`.
    pub(super) async fn wait_daemon(&self, d: usize, limit: Duration) -> anyhow::Result<()> {
        let daemon = &self.daemons[d];
        let until = Instant::now() + limit;
        loop {
            let ready = async {
                let ch = tonic::transport::Endpoint::from_shared(daemon.grpc.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                pb::blockstore_client::BlockstoreClient::new(ch)
                    .open(pb::OpenRequest {
                        namespace: self.namespace.clone(),
                    })
                    .await?;
                anyhow::Ok(())
            }
            .await;
            match ready {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > until => {
                    anyhow::bail!(
                        "daemon {} not ready after {limit:?}: {e:#} (log: {})",
                        daemon.name,
                        daemon.log.display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// `kill -9` of daemon `d`.
    pub(super) fn kill_daemon(&self, d: usize) {
        if let Some(mut child) = self.daemons[d].child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` to daemon `d`, if it runs.
    pub(super) fn signal_daemon(&self, d: usize, sig: libc::c_int) {
        if let Some(child) = &*self.daemons[d].child.lock().unwrap() {
            let _ = process::signal(child.id(), sig);
        }
    }

    /// Whether daemon `d` runs (it may have exited by itself: an error the
    /// report names, with its log).
    pub(super) fn daemon_exited(&self, d: usize) -> Option<String> {
        let mut slot = self.daemons[d].child.lock().unwrap();
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// The peer of daemon `d` in the lab.
    pub(super) fn daemon_peer(&self, d: usize) -> Peer {
        Peer::Node(daemon_lab_index(d))
    }

    /// Takes a free admin-job slot: its config (state directory of its
    /// own) and clock file.
    pub(super) fn take_job_slot(&self) -> Option<usize> {
        let mut slots = self.job_slots.lock().unwrap();
        let i = slots.iter().position(|busy| !busy)?;
        slots[i] = true;
        Some(i)
    }

    /// Gives a slot back.
    pub(super) fn free_job_slot(&self, i: usize) {
        self.job_slots.lock().unwrap()[i] = false;
    }

    /// An admin command (`args` after the config), in slot `slot`, with
    /// its clock at `clock_s`. Its output goes to a log of the slot.
    pub(super) fn job_command(
        &self,
        slot: usize,
        clock_s: i64,
        args: &[&str],
    ) -> anyhow::Result<Command> {
        let state = self.dir.join(format!("admin-{slot}"));
        let config = self.dir.join(format!("admin-{slot}.toml"));
        if !config.exists() {
            std::fs::create_dir_all(&state)?;
            let t = self.cluster.connector_toml(&state, free_port()?);
            std::fs::write(&config, toml::to_string(&t)?)?;
        }
        let mut cmd = self.command(None);
        cmd.arg("--config").arg(&config).args(args);
        if let Some(lib) = &self.faketime {
            let clock = Clock::new(self.dir.join(format!("admin-{slot}.clock")))?;
            clock.set(clock_s)?;
            clock.env(&mut cmd, lib);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("admin-{slot}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .env("NO_COLOR", "1");
        Ok(cmd)
    }

    /// Ends every daemon.
    pub(super) fn stop(&self) {
        for d in 0..self.daemons.len() {
            self.signal_daemon(d, libc::SIGCONT);
            self.kill_daemon(d);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}
