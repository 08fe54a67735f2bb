//! The connector's TOML configuration, its defaults, and where the cluster's
//! `rpc_secret` comes from (the one place several sources are merged).
//!
//! `cluster-config/connector.toml` is the annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment variable that may hold the cluster's `rpc_secret`.
pub const RPC_SECRET_ENV: &str = "GARAGE_IPFS_RPC_SECRET";

/// A secret from the config (`rpc_secret`, the write token): read as a
/// plain string, never shown by `Debug`, so that logging a config or an
/// option struct cannot leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's text, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// No secret, several secrets, or one that is not 32 hex-encoded bytes.
    #[error("rpc_secret: {0}")]
    Secret(String),
    /// A value is out of its range.
    #[error("{0}")]
    Invalid(String),
}

/// The connector's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where the connector keeps its node key and its copy of the layout.
    /// Relative paths are taken from the config file's directory.
    pub state_dir: PathBuf,
    /// Address the connector's RPC peer listens on; storage nodes connect
    /// back to it to push layout changes.
    pub rpc_bind_addr: SocketAddr,
    /// Address advertised to the storage nodes (default: `rpc_bind_addr`).
    #[serde(default)]
    pub rpc_public_addr: Option<SocketAddr>,
    /// The cluster's `rpc_secret`, hex; prefer `rpc_secret_file` or the
    /// `GARAGE_IPFS_RPC_SECRET` environment variable.
    #[serde(default)]
    pub rpc_secret: Option<Secret>,
    /// A file holding the cluster's `rpc_secret`.
    #[serde(default)]
    pub rpc_secret_file: Option<PathBuf>,
    /// Storage nodes to contact first, as `<node id>@<host>:<port>`.
    pub bootstrap_peers: Vec<String>,
    /// Must equal the cluster's replication factor.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: usize,
    /// `consistent` (the default), `degraded` or `dangerous`, as in Garage.
    #[serde(default = "default_consistency_mode")]
    pub consistency_mode: String,
    /// Deadlines.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The daemon's listeners and limits (`garage-ipfs serve`).
    #[serde(default)]
    pub api: ApiConfig,
    /// The `data_dir`s of a storage node on this host. When set, a get
    /// reads the block's file there first, checks it against the CID, and
    /// asks the cluster on any doubt (no file, unreadable, wrong bytes).
    /// Relative paths are taken from the config file's directory.
    #[serde(default)]
    pub colocated_data_dirs: Vec<PathBuf>,
    /// Whether small blocks (at most 3072 bytes) are written many to a
    /// pack (the default) rather than one index entry each. Either way,
    /// blocks written both ways are read.
    #[serde(default = "default_true")]
    pub pack_small_blocks: bool,
    /// Where a pack's bytes go: `rows` (the default), a K2V item beside its
    /// manifest, in the storage nodes' metadata databases; or `blocks`, a
    /// Garage block of its own, in their data directories (dearer to write
    /// and read; keeps the metadata databases small). Packs written either
    /// way are read.
    #[serde(default)]
    pub pack_storage: crate::store::PackStorage,
}

fn default_true() -> bool {
    true
}

/// Environment variable that may hold the write token.
pub const WRITE_TOKEN_ENV: &str = "GARAGE_IPFS_WRITE_TOKEN";

/// The daemon's surfaces: trustless gateway, kubo RPC, gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Trustless gateway (read-only), kubo's default port. It also
    /// answers delegated routing (`/routing/v1/providers/{cid}`).
    pub gateway_addr: SocketAddr,
    /// Multiaddrs under which clients reach the gateway, which delegated
    /// routing announces as the provider of the blocks held (e.g.
    /// `/dns4/gw.example.org/tcp/443/https`). Empty: the gateway's
    /// listening address, unless it listens on every interface (then no
    /// address is announced, and routing answers with no provider).
    pub gateway_public_addrs: Vec<String>,
    /// Kubo-compatible RPC subset, kubo's default port.
    pub rpc_addr: SocketAddr,
    /// gRPC `garage_ipfs.v1.Blockstore`.
    pub grpc_addr: SocketAddr,
    /// Namespace the gateway and the kubo RPC serve (gRPC names its own).
    pub namespace: String,
    /// Bearer token required by writes (`block/put`, `block/rm`,
    /// `dag/import`, gRPC `Put`/`PutMany`/`Delete`).
    pub write_token: Option<Secret>,
    /// A file holding the write token.
    pub write_token_file: Option<PathBuf>,
    /// Accept writes without a token, but only on loopback listeners and
    /// only when no write token is configured (a token, once set, is
    /// always required).
    pub allow_anonymous_writes_on_loopback: bool,
    /// Largest request body, in bytes (a `block/put` of several blocks).
    pub max_body_bytes: usize,
    /// Largest CAR accepted by `dag/import`, in bytes.
    pub max_car_bytes: usize,
    /// Requests handled at once per surface; more get 503.
    pub max_concurrent_requests: usize,
    /// Deadline of one request, in seconds (`dag/import` and `dag/export`
    /// get ten times as long).
    pub request_timeout_secs: u64,
    /// A client must send a request's headers within this many seconds
    /// (and an idle keep-alive connection its next request's), or its
    /// connection is closed: slow clients cannot hold connections open.
    /// On gRPC: a new connection's first bytes, and the answer to an HTTP/2
    /// ping sent after as long an idle time.
    pub header_read_timeout_secs: u64,
    /// Open connections per listener (HTTP and gRPC); beyond it, new
    /// connections wait in the kernel's accept queue (memory stays bounded
    /// under a flood).
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 3980)),
            gateway_public_addrs: Vec::new(),
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 3981)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 3982)),
            namespace: "default".into(),
            write_token: None,
            write_token_file: None,
            allow_anonymous_writes_on_loopback: false,
            max_body_bytes: 32 * 1024 * 1024,
            max_car_bytes: 4 * 1024 * 1024 * 1024,
            max_concurrent_requests: 256,
            request_timeout_secs: 60,
            header_read_timeout_secs: 10,
            max_connections: 1024,
        }
    }
}

impl ApiConfig {
    /// The write token, from exactly one of `write_token`,
    /// `write_token_file`, or `GARAGE_IPFS_WRITE_TOKEN`; `None` if none is
    /// set. Never logged.
    pub fn resolve_write_token(&self) -> Result<Option<Secret>, ConfigError> {
        let token = match (&self.write_token, &self.write_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "both write_token and write_token_file are set: keep one".into(),
                ))
            }
            (Some(t), None) => Some(t.expose().to_string()),
            (None, Some(f)) => Some(read_secret_file(f)?),
            (None, None) => std::env::var(WRITE_TOKEN_ENV).ok(),
        };
        match token.map(|t| t.trim().to_string()) {
            Some(t) if t.is_empty() => Err(ConfigError::Invalid("the write token is empty".into())),
            other => Ok(other.map(Secret)),
        }
    }
}

/// Deadlines of the connector's operations, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Timeouts {
    /// Joining the cluster: layout probe plus waiting for a quorum of nodes.
    pub connect_ms: u64,
    /// One table or K2V request.
    pub rpc_ms: u64,
    /// One block transfer to or from one node.
    pub block_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 30_000,
            rpc_ms: 10_000,
            block_ms: 15_000,
        }
    }
}

impl Timeouts {
    /// Deadline for joining.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// Deadline for one metadata request.
    pub fn rpc(&self) -> Duration {
        Duration::from_millis(self.rpc_ms)
    }
    /// Deadline for one block transfer.
    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }
}

fn default_replication_factor() -> usize {
    3
}

fn default_consistency_mode() -> String {
    "consistent".to_string()
}

/// Reads and validates a config file.
pub fn read_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse_config(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_owned(),
            message,
        },
        other => other,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    if config.state_dir.is_relative() {
        config.state_dir = base.join(&config.state_dir);
    }
    for f in [
        &mut config.rpc_secret_file,
        &mut config.api.write_token_file,
    ]
    .into_iter()
    .flatten()
    .chain(config.colocated_data_dirs.iter_mut())
    {
        if f.is_relative() {
            *f = base.join(&*f);
        }
    }
    Ok(config)
}

/// Parses and validates a config from TOML text.
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<text>"),
        message: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

impl Config {
    /// A config for the given cluster, with defaults for everything else.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        rpc_bind_addr: SocketAddr,
        rpc_secret: impl Into<String>,
        bootstrap_peers: Vec<String>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            rpc_bind_addr,
            rpc_public_addr: None,
            rpc_secret: Some(Secret::new(rpc_secret)),
            rpc_secret_file: None,
            bootstrap_peers,
            replication_factor: default_replication_factor(),
            consistency_mode: default_consistency_mode(),
            timeouts: Timeouts::default(),
            api: ApiConfig::default(),
            colocated_data_dirs: Vec::new(),
            pack_small_blocks: true,
            pack_storage: Default::default(),
        }
    }

    /// Writes small blocks one index entry each instead of packing them
    /// ([`Config::pack_small_blocks`]).
    pub fn with_pack_small_blocks(mut self, on: bool) -> Self {
        self.pack_small_blocks = on;
        self
    }

    /// Where pack bytes go ([`Config::pack_storage`]).
    pub fn with_pack_storage(mut self, storage: crate::store::PackStorage) -> Self {
        self.pack_storage = storage;
        self
    }

    /// Reads blocks from a co-located storage node's data directories
    /// first ([`Config::colocated_data_dirs`]).
    pub fn with_colocated_data_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.colocated_data_dirs = dirs;
        self
    }

    /// Sets the replication factor the connector expects of the cluster.
    pub fn with_replication_factor(mut self, rf: usize) -> Self {
        self.replication_factor = rf;
        self
    }

    /// Sets the daemon's surfaces.
    pub fn with_api(mut self, api: ApiConfig) -> Self {
        self.api = api;
        self
    }

    /// Sets the deadlines.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_peers.is_empty() {
            return Err(ConfigError::Invalid(
                "bootstrap_peers is empty: name at least one storage node as <node id>@<host>:<port>"
                    .into(),
            ));
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err(ConfigError::Invalid(format!(
                "replication_factor {} is out of range (Garage allows 1 to 7)",
                self.replication_factor
            )));
        }
        if !["consistent", "degraded", "dangerous"].contains(&self.consistency_mode.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "consistency_mode {:?}: expected consistent, degraded or dangerous",
                self.consistency_mode
            )));
        }
        if !is_valid_namespace(&self.api.namespace) {
            return Err(ConfigError::Invalid(format!(
                "api.namespace {:?}: {NAMESPACE_RULE}",
                self.api.namespace
            )));
        }
        Ok(())
    }

    /// The address advertised to storage nodes.
    pub fn public_addr(&self) -> SocketAddr {
        self.rpc_public_addr.unwrap_or(self.rpc_bind_addr)
    }

    /// The secret, from exactly one of: `rpc_secret`, `rpc_secret_file`,
    /// or the `GARAGE_IPFS_RPC_SECRET` environment variable (used only when
    /// the file names neither). Never logged.
    pub fn resolve_secret(&self) -> Result<[u8; 32], ConfigError> {
        let text = match (&self.rpc_secret, &self.rpc_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Secret(
                    "both rpc_secret and rpc_secret_file are set: keep one".into(),
                ))
            }
            (Some(s), None) => s.expose().to_string(),
            (None, Some(f)) => read_secret_file(f)?,
            (None, None) => std::env::var(RPC_SECRET_ENV).map_err(|_| {
                ConfigError::Secret(format!(
                    "not configured: set rpc_secret or rpc_secret_file, or {RPC_SECRET_ENV}"
                ))
            })?,
        };
        parse_secret(&text)
    }
}

/// Reads a secret from a file, warning when others can read it.
fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::Secret(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "secret file is readable by other users; chmod 600 it"
        );
    }
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Secret(format!("cannot read {}: {e}", path.display())))
}

/// Parses a secret: 32 bytes, hex-encoded (what `openssl rand -hex 32` gives).
pub fn parse_secret(text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| ConfigError::Secret("not hex: expected 64 hex digits".into()))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        ConfigError::Secret(format!(
            "{} bytes long: expected 32 (64 hex digits)",
            b.len()
        ))
    })
}

/// The rule for namespace names, in words.
pub const NAMESPACE_RULE: &str = "use 1 to 64 characters among A-Z a-z 0-9 . _ -";

/// Whether `name` is a valid namespace name ([`NAMESPACE_RULE`]): it is a
/// key prefix in Garage's tables and a path segment in our URLs, so it is
/// kept short and plain. Here, below the store, so that both the config
/// and the store check it.
pub fn is_valid_namespace(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../cluster-config/connector.toml");

    #[test]
    fn example_parses() {
        let c = parse_config(EXAMPLE).unwrap();
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.bootstrap_peers.len(), 3);
        assert_eq!(c.timeouts.rpc_ms, 10_000);
        c.resolve_secret().unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = EXAMPLE.replace("replication_factor = 3", "replication_factor = 9");
        assert!(parse_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let typo = format!("{EXAMPLE}\nreplicaton_factor = 3\n");
        assert!(parse_config(&typo).is_err());
        assert!(parse_secret("abcd")
            .unwrap_err()
            .to_string()
            .contains("2 bytes"));
        assert!(parse_secret("zz")
            .unwrap_err()
            .to_string()
            .contains("not hex"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secret = "7f3a".repeat(16);
        let mut c = parse_config(
            &EXAMPLE.replace(
                &EXAMPLE
                    .lines()
                    .find(|l| l.starts_with("rpc_secret"))
                    .expect("the example sets rpc_secret")
                    .to_string(),
                &format!("rpc_secret = \"{secret}\""),
            ),
        )
        .unwrap();
        c.api.write_token = Some(Secret::new("tok-3141592653"));
        assert_eq!(
            c.resolve_secret().unwrap().to_vec(),
            hex::decode(&secret).unwrap()
        );
        let shown = format!("{c:?} {:?}", c.api.resolve_write_token().unwrap());
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("tok-3141592653"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
