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
    /// Too few storage nodes answered. Transient: retried.
    #[error("quorum not reached: {0}")]
    Quorum(String),
    /// A connection to a storage node failed or was lost. Transient:
    /// retried (the next request reconnects).
    #[error("lost connection to a storage node: {0}")]
    Connection(String),
    /// The cluster's layout is not usable yet (a node just started, or a
    /// layout change is being applied). Transient: retried.
    #[error("the cluster layout is not ready yet")]
    LayoutNotReady,
    /// An operation ran out of time (how long, when we set the deadline).
    /// Transient, but not retried: it has used its caller's time.
    #[error("timed out{} while {}", after(.0), .1)]
    Timeout(Option<Duration>, &'static str),
    /// No node returned a valid copy of the block.
    #[error("block {0:?} not found: no node returned a valid copy")]
    MissingBlock(Hash),
    /// A node returned data that does not decode or match its hash.
    #[error("corrupt data from a storage node: {0}")]
    Corrupt(String),
    /// A storage node refused the request for a reason of its own.
    #[error("a storage node refused the request: {0}")]
    Remote(String),
    /// Anything else: a message we cannot decode, a task of ours that
    /// stopped. Not transient.
    #[error("internal error: {0}")]
    Internal(String),
}

fn after(limit: &Option<Duration>) -> String {
    limit.map_or(String::new(), |d| format!(" after {d:?}"))
}

impl Error {
    /// Whether the failure may go away by itself (nodes down or
    /// restarting, a lost connection, a timeout): clients should retry
    /// later (503 / `UNAVAILABLE`), and nothing is wrong with the request.
    pub fn is_transient(&self) -> bool {
        self.is_retryable() || matches!(self, Error::Timeout(..) | Error::Unreachable(_))
    }

    /// Whether the store retries the operation at once, with a short
    /// backoff: the failures the next request often does not see (a
    /// connection to a restarted node is re-established, a quorum comes
    /// back). Timeouts are not: they have used the deadline already.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Quorum(_) | Error::Connection(_) | Error::LayoutNotReady
        )
    }

    /// A copy of this error for each of several waiters (a shared request
    /// failed): the same variant, so that each waiter retries, or not, as
    /// it would have alone.
    pub fn duplicate(&self) -> Self {
        match self {
            Error::Quorum(m) => Error::Quorum(m.clone()),
            Error::Connection(m) => Error::Connection(m.clone()),
            Error::LayoutNotReady => Error::LayoutNotReady,
            Error::Timeout(d, w) => Error::Timeout(*d, w),
            Error::MissingBlock(h) => Error::MissingBlock(*h),
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::Remote(m) => Error::Remote(m.clone()),
            Error::Unreachable(m) => Error::Unreachable(m.clone()),
            other => Error::Internal(other.to_string()),
        }
    }

    /// Sorts an error that a storage node sent back as text (Garage
    /// forwards a node's own failures as strings): a quorum, timeout or
    /// connection failure on the node's side is as transient as on ours.
    fn from_remote_text(m: String) -> Self {
        let lower = m.to_ascii_lowercase();
        if lower.contains("could not reach quorum") {
            Error::Quorum(m)
        } else if lower.contains("timeout") || lower.contains("timed out") {
            Error::Timeout(None, "a storage node waited for its peers")
        } else if lower.contains("not connected") || lower.contains("connection closed") {
            Error::Connection(m)
        } else if lower.contains("layout not ready") {
            Error::LayoutNotReady
        } else {
            Error::Remote(m)
        }
    }
}

impl From<garage_util::error::Error> for Error {
    fn from(e: garage_util::error::Error) -> Self {
        use garage_util::error::Error as G;
        match e {
            G::Quorum(..) => Error::Quorum(e.to_string()),
            G::Timeout => Error::Timeout(None, "waiting for storage nodes"),
            G::LayoutNotReady => Error::LayoutNotReady,
            G::MissingBlock(h) => Error::MissingBlock(h),
            G::CorruptData(_) => Error::Corrupt(e.to_string()),
            G::Net(n) => n.into(),
            // The connector keeps no Garage storage of its own: the I/O
            // errors Garage's layers hand it come from its sockets.
            G::Io(_) => Error::Connection(e.to_string()),
            G::RemoteError(m) | G::Message(m) => Error::from_remote_text(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<garage_net::error::Error> for Error {
    fn from(e: garage_net::error::Error) -> Self {
        use garage_net::error::Error as N;
        match e {
            N::Io(_) | N::ConnectionClosed | N::Handshake(_) | N::NoHandler | N::OneshotRecv(_) => {
                Error::Connection(e.to_string())
            }
            N::Remote(_, m) | N::Message(m) => Error::from_remote_text(m),
            other => Error::Internal(other.to_string()),
        }
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
        Err(_) => Err(Error::Timeout(Some(limit), what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_told_apart_from_permanent_ones() {
        use garage_util::error::Error as G;
        let quorum: Error = G::Quorum(2, None, 1, 3, vec!["down".into()]).into();
        assert!(matches!(quorum, Error::Quorum(_)) && quorum.is_retryable());
        let closed: Error = garage_net::error::Error::ConnectionClosed.into();
        assert!(matches!(closed, Error::Connection(_)) && closed.is_retryable());
        let remote: Error =
            G::RemoteError("Could not reach quorum of 2 (sets=None). 1 of 3 ...".into()).into();
        assert!(remote.is_retryable(), "{remote:?}");
        let timeout: Error = G::Timeout.into();
        assert!(timeout.is_transient() && !timeout.is_retryable());
        assert_eq!(
            timeout.to_string(),
            "timed out while waiting for storage nodes"
        );
        assert_eq!(
            Error::Timeout(Some(Duration::from_secs(30)), "reading a block").to_string(),
            "timed out after 30s while reading a block"
        );
        for permanent in [
            G::CorruptData(Hash::from([7; 32])).into(),
            G::RemoteError("bad request".into()).into(),
            Error::Internal("the write batcher stopped".into()),
        ] {
            assert!(!permanent.is_transient(), "{permanent:?}");
            assert!(!permanent.duplicate().is_transient(), "{permanent:?}");
        }
        assert!(quorum.duplicate().is_retryable());
    }
}
