//! Errors of the store layer, as users of the store see them.

use cid::Cid;

use crate::cid::CidError;
use crate::garage;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CID or the data given with it was refused; nothing was stored.
    #[error(transparent)]
    Cid(#[from] CidError),
    /// A namespace name outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid namespace name {0:?}: {rule}", rule = crate::config::NAMESPACE_RULE)]
    BadNamespace(String),
    /// The index names a block that no node could return intact.
    #[error("block {cid} is indexed but no node returned a valid copy ({cause})")]
    Unreadable {
        /// The block.
        cid: Cid,
        /// The last failure.
        cause: String,
    },
    /// A GC root that the namespace does not hold.
    #[error(
        "GC root {0} is not stored in this namespace; refusing to collect (check the roots file)"
    )]
    GcRootMissing(Cid),
    /// A namespace that was never created.
    #[error(
        "unknown namespace {0:?}: create it with `garage-ipfs namespace create {0}` \
         (`garage-ipfs namespace list` shows the existing ones)"
    )]
    UnknownNamespace(String),
    /// A namespace written in an index format this version cannot read.
    #[error(
        "namespace {name:?} holds index format {format}, newer than this garage-ipfs reads \
         (up to {known}): upgrade garage-ipfs"
    )]
    NewerFormat {
        /// The namespace.
        name: String,
        /// The highest format written to it.
        format: u8,
        /// The highest this version knows.
        known: u8,
    },
    /// Another compaction of the namespace holds its lease.
    #[error(
        "another compaction of namespace {name:?} is running (its lease holds until {}); \
         wait for it to finish (a killed run's lease expires then, or pass --break-lease \
         if no other run is alive)",
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(*until_ms))
    )]
    CompactionRunning {
        /// The namespace.
        name: String,
        /// When the lease ends unless renewed (ms since the epoch).
        until_ms: u64,
    },
    /// An index entry that cannot be decoded.
    #[error("corrupt index entry {key}: {reason}")]
    BadIndexEntry {
        /// The entry's sort key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Every anchor generation of this block's shard is used up (the block
    /// was deleted and re-put too many times within a day).
    #[error("block {0} was deleted and re-added too often recently; retry tomorrow")]
    GenerationsExhausted(Cid),
    /// Some blocks of a batch were not stored; the others were.
    #[error("{} of {total} blocks were not stored: {}", failed.len(), summarize(failed))]
    Partial {
        /// The blocks that failed, with why.
        failed: Vec<(Cid, String)>,
        /// Blocks in the batch.
        total: usize,
        /// Whether every failure was transient (worth retrying later).
        transient: bool,
    },
    /// The cluster could not complete the operation (quorum lost, timeout…).
    #[error(transparent)]
    Cluster(#[from] garage::Error),
    /// A file of the connector's state directory (the filter's snapshot).
    #[error("state directory: {0}")]
    StateDir(std::io::Error),
}

fn summarize(failed: &[(Cid, String)]) -> String {
    let mut s = failed
        .iter()
        .take(3)
        .map(|(c, e)| format!("{c}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    if failed.len() > 3 {
        s.push_str(&format!("; and {} more", failed.len() - 3));
    }
    s
}

impl From<garage_util::error::Error> for Error {
    fn from(e: garage_util::error::Error) -> Self {
        Error::Cluster(e.into())
    }
}

impl Error {
    /// Whether the failure may go away by itself (the cluster's, not the
    /// request's): a transient cluster error, or a batch whose blocks
    /// that failed all failed on one.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Cluster(e) => e.is_transient(),
            Error::Partial { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Whether the failure is the caller's input (as opposed to the cluster).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Cid(_) | Error::BadNamespace(_) | Error::UnknownNamespace(_)
        )
    }
}
