//! Real kubo nodes: the `ipfs` binaries, repos whose blocks live in a
//! garage-ipfs namespace, and running kubo daemons.
//!
//! Two binaries, both built with plain `go build` from the Go module in
//! `kubo-plugin/` (kubo is a module dependency there, not a fork):
//! - [`Flavour::Garage`]: kubo with our datastore plugin preloaded
//!   (`kubo-plugin/cmd/ipfs`), datastore type `garageipfs`;
//! - [`Flavour::Stock`]: kubo's own `cmd/ipfs` from the same module graph,
//!   for the flatfs peers of the tests and the benchmark.
//!
//! A repo is made in two steps ([`KuboConfig`]): kubo generates a fresh
//! config (identity, defaults, profiles) in a scratch repo, we point its
//! `/blocks` mount at garage-ipfs, and `ipfs init <config>` makes the real
//! repo from it, so that `datastore_spec` is right from the start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{io_err, process, HarnessError};

/// The kubo release the plugin is built against (`kubo-plugin/go.mod`).
pub const KUBO_VERSION: &str = "0.43.1";

/// The datastore type our plugin registers.
pub const DATASTORE_TYPE: &str = "garageipfs";

/// Environment variable naming a kubo binary with our plugin, to use
/// instead of building one.
pub const KUBO_BIN_ENV: &str = "GARAGE_IPFS_KUBO_BIN";

/// Which kubo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// kubo with the garage-ipfs datastore plugin.
    Garage,
    /// kubo as released (flatfs + leveldb).
    Stock,
    /// kubo with go-ds-s3 preloaded, built the same way as ours
    /// (`benchmarks/kubo-s3/`), for the benchmark.
    S3,
    /// Not kubo: boxo's path gateway (the code of kubo's and rainbow's
    /// gateways) taking its blocks from remote trustless gateways, as
    /// rainbow does (`kubo-plugin/cmd/remote-gateway`), for the interop
    /// tests.
    RemoteGateway,
}

impl Flavour {
    fn file_name(self) -> &'static str {
        match self {
            Flavour::Garage => "ipfs",
            Flavour::Stock => "ipfs-stock",
            Flavour::S3 => "ipfs-s3",
            Flavour::RemoteGateway => "remote-gateway",
        }
    }

    /// The Go module it is built in, and the package.
    fn module(self) -> (&'static str, &'static str) {
        match self {
            Flavour::Garage => ("kubo-plugin", "./cmd/ipfs"),
            Flavour::Stock => ("kubo-plugin", "github.com/ipfs/kubo/cmd/ipfs"),
            Flavour::S3 => ("benchmarks/kubo-s3", "."),
            Flavour::RemoteGateway => ("kubo-plugin", "./cmd/remote-gateway"),
        }
    }
}

/// The Go module a flavour is built in, when this program was built from
/// a source tree that is still there.
pub fn source(flavour: Flavour) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(flavour.module().0);
    dir.join("go.mod").is_file().then_some(dir)
}

/// Where [`kubo_binary`] builds the binaries.
pub fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kubo")
}

/// Builds a kubo binary to `out` with `go build` (seconds when Go's build
/// cache is warm, a few minutes the first time).
pub fn build(flavour: Flavour, out: &Path) -> Result<(), HarnessError> {
    let (module, package) = flavour.module();
    let src = source(flavour).ok_or_else(|| {
        HarnessError::Kubo(format!(
            "the {module}/ Go module is not beside this binary's source; build kubo with \
             `go build -o ipfs ./cmd/ipfs` in kubo-plugin/, or set GARAGE_IPFS_KUBO_BIN"
        ))
    })?;
    let started = Instant::now();
    let out_abs = std::path::absolute(out).map_err(io_err(out))?;
    let status = Command::new(std::env::var_os("GO").unwrap_or_else(|| "go".into()))
        .args(["build", "-o"])
        .arg(&out_abs)
        .arg(package)
        .current_dir(&src)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            HarnessError::Kubo(format!(
                "cannot run `go` to build kubo ({e}); install Go {} or newer",
                GO_NEEDED
            ))
        })?;
    if !status.success() {
        return Err(HarnessError::Kubo(format!(
            "`go build -o {} {}` in {} failed ({status})",
            out_abs.display(),
            package,
            src.display()
        )));
    }
    tracing::debug!(?flavour, took = ?started.elapsed(), "built kubo");
    Ok(())
}

/// The Go release kubo's go.mod asks for.
pub const GO_NEEDED: &str = "1.26.5";

/// A kubo binary of the given flavour: `GARAGE_IPFS_KUBO_BIN` for ours if
/// set, else built from `kubo-plugin/` into [`build_dir`] (once per
/// process; Go's cache makes an unchanged rebuild take about a second).
pub fn kubo_binary(flavour: Flavour) -> Result<PathBuf, HarnessError> {
    if flavour == Flavour::Garage {
        if let Some(bin) = std::env::var_os(KUBO_BIN_ENV).map(PathBuf::from) {
            return check_version(&bin).map(|()| bin);
        }
    }
    static BUILT: OnceLock<Mutex<Vec<(Flavour, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    if let Some((_, bin)) = built.iter().find(|(f, _)| *f == flavour) {
        return Ok(bin.clone());
    }
    let bin = build_dir().join(flavour.file_name());
    if !bin.exists() {
        eprintln!(
            "garage-ipfs: building kubo {KUBO_VERSION}{} with go build (a few minutes the first time)",
            match flavour {
                Flavour::Garage => " with the garage-ipfs datastore plugin",
                Flavour::S3 => " with go-ds-s3",
                Flavour::Stock => "",
                Flavour::RemoteGateway => "'s gateway on remote backends (boxo)",
            }
        );
    }
    build(flavour, &bin)?;
    if flavour != Flavour::RemoteGateway {
        check_version(&bin)?;
    }
    built.push((flavour, bin.clone()));
    Ok(bin)
}

fn check_version(bin: &Path) -> Result<(), HarnessError> {
    let out = Command::new(bin)
        .arg("version")
        .env("IPFS_TELEMETRY", "off")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Kubo(format!("cannot run {}: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim() == format!("ipfs version {KUBO_VERSION}") {
        Ok(())
    } else {
        Err(HarnessError::Kubo(format!(
            "{} says {:?}; garage-ipfs is built against kubo {KUBO_VERSION}",
            bin.display(),
            text.trim()
        )))
    }
}

/// Where the plugin finds the daemon's write token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token: the daemon must allow anonymous writes on loopback.
    None,
    /// A file holding the token (absolute, or relative to the repo).
    File(PathBuf),
    /// An environment variable of the kubo process.
    Env(String),
}

/// The `garageipfs` datastore of a repo.
#[derive(Debug, Clone)]
pub struct GarageSpec {
    /// The namespace holding the node's blocks.
    pub namespace: String,
    /// The daemon's gRPC address.
    pub endpoint: String,
    /// The write token's source.
    pub token: TokenSource,
    /// Deadline of one call, e.g. `30s` (None: the plugin's default).
    pub timeout: Option<String>,
}

impl GarageSpec {
    /// The spec's `child` entry.
    pub fn to_json(&self) -> Value {
        let mut child = json!({
            "type": DATASTORE_TYPE,
            "namespace": self.namespace,
            "endpoint": self.endpoint,
        });
        match &self.token {
            TokenSource::None => {}
            TokenSource::File(p) => child["token_file"] = json!(p.display().to_string()),
            TokenSource::Env(v) => child["token_env"] = json!(v),
        }
        if let Some(t) = &self.timeout {
            child["timeout"] = json!(t);
        }
        child
    }
}

/// A kubo config, made by kubo itself, on its way to becoming a repo.
#[derive(Debug, Clone)]
pub struct KuboConfig {
    /// The config, as kubo's `config` file holds it.
    pub json: Value,
    /// The node's peer ID.
    pub peer_id: String,
}

impl KuboConfig {
    /// A fresh config (new identity, kubo's defaults, then `profiles`),
    /// made by `ipfs init` in a scratch repo beside `near`.
    pub fn generate(bin: &Path, near: &Path, profiles: &[String]) -> Result<Self, HarnessError> {
        let parent = near
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let scratch = parent.join(format!(".kubo-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let mut cmd = kubo_command(bin, &scratch);
        cmd.args(["init", "--empty-repo"]);
        if !profiles.is_empty() {
            cmd.arg(format!("--profile={}", profiles.join(",")));
        }
        let result = run_output(cmd, "ipfs init (scratch repo)").and_then(|_| {
            let path = scratch.join("config");
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            serde_json::from_str::<Value>(&text)
                .map_err(|e| HarnessError::Kubo(format!("{}: {e}", path.display())))
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let json = result?;
        let peer_id = json["Identity"]["PeerID"]
            .as_str()
            .ok_or_else(|| HarnessError::Kubo("kubo's config has no Identity.PeerID".into()))?
            .to_string();
        Ok(Self { json, peer_id })
    }

    /// The namespace a node gets by default: its own, named after it.
    pub fn default_namespace(&self) -> String {
        format!("kubo-{}", self.peer_id)
    }

    /// Mounts `/blocks` on garage-ipfs (under kubo's usual `measure`
    /// wrapper); the rest of the datastore stays as kubo made it. kubo's
    /// Bloom filter is switched off: the daemon's presence filter does
    /// that job, with nothing to rebuild at start.
    pub fn use_garage(&mut self, spec: &GarageSpec) -> Result<(), HarnessError> {
        self.mount_blocks(spec.to_json(), "garageipfs.datastore")?;
        self.json["Datastore"]["BloomFilterSize"] = json!(0);
        Ok(())
    }

    /// Replaces the datastore mounted at `/blocks` by `child`, under a
    /// `measure` wrapper with metrics `prefix`.
    pub fn mount_blocks(&mut self, child: Value, prefix: &str) -> Result<(), HarnessError> {
        let mounts = self.json["Datastore"]["Spec"]["mounts"]
            .as_array_mut()
            .ok_or_else(|| {
                HarnessError::Kubo(
                    "kubo's Datastore.Spec is not a mount (a profile changed it?)".into(),
                )
            })?;
        let blocks = mounts
            .iter_mut()
            .find(|m| m["mountpoint"] == "/blocks")
            .ok_or_else(|| HarnessError::Kubo("kubo's Datastore.Spec has no /blocks".into()))?;
        *blocks = json!({
            "mountpoint": "/blocks",
            "type": "measure",
            "prefix": prefix,
            "child": child,
        });
        Ok(())
    }

    /// Makes the repo at `repo` from this config (`ipfs init --empty-repo
    /// <config>`). With our datastore, kubo writes its first block through
    /// it, so the daemon must be up and the namespace registered.
    pub fn init_repo(&self, bin: &Path, repo: &Path) -> Result<(), HarnessError> {
        if repo.join("config").exists() {
            return Err(HarnessError::Kubo(format!(
                "{} already holds a kubo repo",
                repo.display()
            )));
        }
        std::fs::create_dir_all(repo).map_err(io_err(repo))?;
        let file = repo.join(".init-config.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&self.json).expect("json"))
            .map_err(io_err(&file))?;
        let mut cmd = kubo_command(bin, repo);
        cmd.args(["init", "--empty-repo"]).arg(&file);
        let result = run_output(cmd, "ipfs init");
        let _ = std::fs::remove_file(&file);
        result.map(drop)
    }
}

/// A `Command` for `bin` on the repo `repo`, without telemetry.
pub fn kubo_command(bin: &Path, repo: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("IPFS_PATH", repo)
        .env("IPFS_TELEMETRY", "off")
        .stdin(Stdio::null());
    cmd
}

/// Runs a command to completion: its stdout, or an error with its output.
fn run_output(mut cmd: Command, what: &str) -> Result<String, HarnessError> {
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Kubo(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: what.to_string(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// A kubo node: a repo, and its daemon while it runs. The daemon is
/// attached to this process (it dies with it) and killed on drop.
pub struct KuboNode {
    /// The binary.
    pub bin: PathBuf,
    /// The repo (`IPFS_PATH`).
    pub repo: PathBuf,
    daemon: Mutex<Option<Child>>,
    starts: Mutex<u32>,
}

impl KuboNode {
    /// A node on an existing repo; nothing runs yet.
    pub fn new(bin: impl Into<PathBuf>, repo: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            repo: repo.into(),
            daemon: Mutex::new(None),
            starts: Mutex::new(0),
        }
    }

    /// An `ipfs` command on this repo (through the daemon's API while it
    /// runs, as kubo does).
    pub fn command(&self) -> Command {
        kubo_command(&self.bin, &self.repo)
    }

    /// Runs `ipfs ARGS`: stdout, or an error with the output.
    pub fn run(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = self.command();
        cmd.args(args);
        run_output(cmd, &format!("ipfs {}", args.join(" ")))
    }

    /// Starts `ipfs daemon` and waits until its API answers. Its output
    /// goes to `daemon-N.log` in the repo.
    pub fn start(&self, limit: Duration) -> Result<(), HarnessError> {
        let n = {
            let mut s = self.starts.lock().unwrap();
            *s += 1;
            *s
        };
        let log_path = self.log_path(n);
        let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let mut cmd = self.command();
        cmd.arg("daemon")
            .stdout(log.try_clone().map_err(io_err(&log_path))?)
            .stderr(log);
        let mut child = process::spawn_attached(cmd)
            .map_err(|e| HarnessError::Kubo(format!("cannot start ipfs daemon: {e}")))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HarnessError::Kubo(format!(
                    "ipfs daemon exited ({status}) while starting:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("Daemon is ready") {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout(format!(
                    "ipfs daemon not ready within {limit:?}:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        *self.daemon.lock().unwrap() = Some(child);
        Ok(())
    }

    /// The log of the `n`th start.
    pub fn log_path(&self, n: u32) -> PathBuf {
        self.repo.join(format!("daemon-{n}.log"))
    }

    /// The log of the daemon that runs or ran last.
    pub fn log(&self) -> String {
        let n = *self.starts.lock().unwrap();
        std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
    }

    /// The daemon's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.lock().unwrap().as_ref().map(Child::id)
    }

    /// Stops the daemon as an operator would (SIGTERM), SIGKILL after 30 s.
    pub fn stop(&self) {
        if let Some(mut child) = self.daemon.lock().unwrap().take() {
            let _ = process::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.daemon.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The HTTP address of the running daemon's RPC API
    /// (`http://127.0.0.1:PORT`), from the repo's `api` file.
    pub fn api_url(&self) -> Result<String, HarnessError> {
        let path = self.repo.join("api");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        multiaddr_to_http(text.trim()).ok_or_else(|| {
            HarnessError::Kubo(format!(
                "{}: unexpected API address {text:?}",
                path.display()
            ))
        })
    }

    /// The gateway's HTTP address of the running daemon, from its config.
    pub fn gateway_url(&self) -> Result<String, HarnessError> {
        let path = self.repo.join("gateway");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(text.trim().to_string())
    }

    /// The running daemon's loopback TCP swarm address (`ipfs id`).
    pub fn loopback_addr(&self) -> Result<String, HarnessError> {
        let out = self.run(&["id"])?;
        let id: Value =
            serde_json::from_str(&out).map_err(|e| HarnessError::Kubo(format!("ipfs id: {e}")))?;
        id["Addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .map(str::to_string)
            .ok_or_else(|| HarnessError::Kubo("the node listens on no loopback TCP address".into()))
    }

    /// Connects this running node to another one over loopback.
    pub fn connect(&self, other: &KuboNode) -> Result<(), HarnessError> {
        self.run(&["swarm", "connect", &other.loopback_addr()?])
            .map(drop)
    }

    /// The node's peer ID.
    pub fn peer_id(&self) -> Result<String, HarnessError> {
        let path = self.repo.join("config");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| HarnessError::Kubo(format!("{}: {e}", path.display())))?;
        json["Identity"]["PeerID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| HarnessError::Kubo(format!("{}: no Identity.PeerID", path.display())))
    }
}

impl Drop for KuboNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/ip4/A/tcp/P` → `http://A:P`.
fn multiaddr_to_http(ma: &str) -> Option<String> {
    let parts: Vec<&str> = ma.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", host, "tcp", port] => Some(format!("http://{host}:{port}")),
        ["", "ip6", host, "tcp", port] => Some(format!("http://[{host}]:{port}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_multiaddrs_become_urls() {
        assert_eq!(
            multiaddr_to_http("/ip4/127.0.0.1/tcp/5001").as_deref(),
            Some("http://127.0.0.1:5001")
        );
        assert_eq!(
            multiaddr_to_http("/ip6/::1/tcp/5001").as_deref(),
            Some("http://[::1]:5001")
        );
        assert_eq!(multiaddr_to_http("/dns/x/tcp/1"), None);
    }

    #[test]
    fn the_spec_carries_no_token() {
        let spec = GarageSpec {
            namespace: "kubo-a".into(),
            endpoint: "127.0.0.1:3982".into(),
            token: TokenSource::Env("GARAGE_IPFS_WRITE_TOKEN".into()),
            timeout: Some("10s".into()),
        };
        assert_eq!(
            spec.to_json(),
            json!({"type": "garageipfs", "namespace": "kubo-a", "endpoint": "127.0.0.1:3982",
                   "token_env": "GARAGE_IPFS_WRITE_TOKEN", "timeout": "10s"})
        );
    }
}
