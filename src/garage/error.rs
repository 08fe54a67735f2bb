//! Errors of the cluster layer: joining, and talking to storage nodes.

use std::net::SocketAddr;
use std::time::Duration;

use garage_util::data::Hash;

/// What can go wrong between the connector and the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No bootstrap peer accepted a connection.
    #[error(
        "could not join the cluster: no bootstrap peer accepted the connection ({0}). \
         Check that the nodes are running, that bootstrap_peers names them, and that \
         rpc_secret is the cluster's (a wrong secret fails the handshake)"
    )]
    Unreachable(String),
    /// The connector's replication factor is not the cluster's.
    #[error(
        "replication factor mismatch: this connector is configured with {configured} but the \
         cluster runs with {cluster}; refusing to join (a peer with a different factor makes \
         Garage nodes exit). Set replication_factor = {cluster}"
    )]
    ReplicationFactor {
        /// From our config.
        configured: usize,
        /// From the cluster's layout.
        cluster: usize,
    },
    /// The cluster has never had a layout applied.
    #[error("the cluster has no layout applied yet (run `garage layout assign` and `garage layout apply`)")]
    NoLayout,
    /// A `bootstrap_peers` entry does not parse.
    #[error("bad bootstrap peer {0:?}: expected <64 hex digits node id>@<host>:<port>")]
    BadPeer(String),
    /// Our RPC port is taken.
    #[error("cannot listen on rpc_bind_addr {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The state directory or its local database could not be used.
    #[error("state directory: {0}")]
    State(String),
    /// Too few storage nodes answered.
    #[error("quorum not reached: {0}")]
    Quorum(String),
    /// An operation ran out of time.
    #[error("timed out after {0:?} while {1}")]
    Timeout(Duration, &'static str),
    /// No node returned a valid copy of the block.
    #[error("block {0:?} not found: no node returned a valid copy")]
    MissingBlock(Hash),
    /// Any other failure reported by Garage's RPC layer.
    #[error("cluster RPC failed: {0}")]
    Rpc(String),
}

impl Error {
    /// A copy of this error for each of several waiters (a shared request
    /// failed): same variant where the variant can be copied.
    pub fn duplicate(&self) -> Self {
        match self {
            Error::Quorum(m) => Error::Quorum(m.clone()),
            Error::Timeout(d, w) => Error::Timeout(*d, w),
            Error::MissingBlock(h) => Error::MissingBlock(*h),
            Error::Rpc(m) => Error::Rpc(m.clone()),
            other => Error::Rpc(other.to_string()),
        }
    }
}

impl From<garage_util::error::Error> for Error {
    fn from(e: garage_util::error::Error) -> Self {
        use garage_util::error::Error as G;
        match e {
            G::Quorum(..) => Error::Quorum(e.to_string()),
            G::Timeout => Error::Timeout(Duration::ZERO, "waiting for a storage node"),
            G::MissingBlock(h) => Error::MissingBlock(h),
            other => Error::Rpc(other.to_string()),
        }
    }
}

impl From<garage_net::error::Error> for Error {
    fn from(e: garage_net::error::Error) -> Self {
        Error::Rpc(e.to_string())
    }
}

/// Runs `fut` with a deadline, naming what timed out.
pub(crate) async fn deadline<T, E: Into<Error>>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(Error::Timeout(limit, what)),
    }
}
