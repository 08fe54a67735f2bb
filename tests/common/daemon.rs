//! The daemon as a process of its own (`garage-ipfs serve`), on free ports,
//! with a write token: started, stopped, killed and restarted by tests.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use garage_ipfs::harness::free_port;

use super::{cluster, eventually_async, state_dir, ChildGuard};

/// A `garage-ipfs serve` process and its config.
pub struct DaemonProc {
    /// The config file.
    pub config: PathBuf,
    /// Its directory (state, logs, token file).
    pub dir: PathBuf,
    /// The write token.
    pub token: String,
    /// A file holding the token.
    pub token_file: PathBuf,
    /// Gateway, kubo RPC and gRPC ports.
    pub ports: [u16; 3],
    child: Mutex<Option<ChildGuard>>,
    starts: Mutex<u32>,
}

impl DaemonProc {
    /// Writes a config (`namespace` served by the gateway and kubo RPC,
    /// free ports, a random write token in a file); nothing runs yet.
    pub fn new(label: &str, namespace: &str) -> Self {
        let dir = state_dir(label);
        let token = format!("tok-{:016x}", rand::random::<u64>());
        let token_file = dir.join("write_token");
        std::fs::write(&token_file, &token).unwrap();
        let ports = [
            free_port().unwrap(),
            free_port().unwrap(),
            free_port().unwrap(),
        ];
        let config = dir.join("connector.toml");
        let text = cluster().daemon_config(
            &dir.join("state"),
            free_port().unwrap(),
            ports,
            namespace,
            &[("write_token_file", token_file.display().to_string().into())],
        );
        std::fs::write(&config, text).unwrap();
        Self {
            config,
            dir,
            token,
            token_file,
            ports,
            child: Mutex::new(None),
            starts: Mutex::new(0),
        }
    }

    /// The log of the `n`th start.
    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("daemon-{n}.log"))
    }

    /// The gRPC address, `127.0.0.1:PORT`.
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports[2])
    }

    /// The kubo RPC base URL.
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[1])
    }

    /// Starts the daemon and waits until it answers.
    pub async fn start(&self) {
        let n = {
            let mut s = self.starts.lock().unwrap();
            *s += 1;
            *s
        };
        let log = std::fs::File::create(self.log_path(n)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"));
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = ChildGuard::spawn(cmd);
        let pid = child.id();
        *self.child.lock().unwrap() = Some(child);
        let http = reqwest::Client::new();
        let url = format!("{}/api/v0/version", self.rpc_url());
        eventually_async(Duration::from_secs(60), "the daemon answers", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.post(&url).send().await.is_ok() }
        })
        .await;
        // A client that resets its connection while the daemon writes must
        // not kill it: SIGPIPE is ignored (bit 12 of SigIgn).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap();
        assert!(
            ignored & (1 << (libc::SIGPIPE - 1)) != 0,
            "the daemon does not ignore SIGPIPE"
        );
    }

    /// Stops the daemon gracefully (SIGTERM) and waits for it.
    pub fn stop(&self) {
        if let Some(child) = self.child.lock().unwrap().take() {
            child.terminate();
        }
    }

    /// Kills the daemon (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(child) = self.child.lock().unwrap().take() {
            child.kill();
        }
    }

    /// When the daemon was started and has since exited on its own: its
    /// exit status and the tail of its last log. A test that finds this
    /// restarts it, so that one crash fails one test, not all that follow.
    pub fn exited(&self) -> Option<String> {
        let status = {
            let mut child = self.child.lock().unwrap();
            let status = child.as_mut()?.try_wait()?;
            *child = None;
            status
        };
        let n = *self.starts.lock().unwrap();
        let log = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(format!(
            "the daemon exited ({status}); the end of daemon-{n}.log:\n{}",
            tail.join("\n")
        ))
    }

    /// Waits until the daemon is connected to all three storage nodes
    /// again (after nodes restarted).
    pub async fn wait_sees_all_nodes(&self) {
        eventually_async(
            Duration::from_secs(90),
            "the daemon sees all nodes up",
            || async {
                metric(
                    &self.metrics().await,
                    "garage_ipfs_cluster_storage_nodes_up",
                ) == 3.0
            },
        )
        .await;
    }

    /// The daemon's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.rpc_url()))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap()
    }
}

/// The value of one sample of a Prometheus text, 0 when absent:
/// `name{labels}` as the exposition prints it (labels in its order).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
