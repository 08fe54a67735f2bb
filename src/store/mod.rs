//! The block store: IPFS blocks by CID, in namespaces.
//!
//! [`BlockStore`] is the seam the API layers are generic over.
//! [`GarageStore`] keeps blocks in a Garage cluster; [`MemBlockStore`] keeps
//! them in memory, for tests of the layers above.

mod anchor;
mod blockstore_trait;
pub(crate) mod cache;
mod compact;
mod error;
pub(crate) mod filter;
mod garage;
mod gc;
mod gone;
pub(crate) mod index;
mod memory;
mod pack;
mod packed;
mod registry;
mod snapshot;
pub(crate) mod verify;

use std::future::Future;

use bytes::Bytes;
use cid::Cid;
use futures::stream::{BoxStream, StreamExt};
use multihash::Multihash;

pub use self::garage::{GarageStore, Namespace};
pub use anchor::{AnchorId, ANCHOR_SHARDS, MAX_GENERATIONS};
#[cfg(feature = "integration-tests")]
pub use compact::CompactHooks;
pub use compact::{CompactOptions, CompactSummary, DEFAULT_GRACE, LEASE, MIN_AGE};
pub use error::Error;
pub use filter::{FilterStats, COUNTER_LAG};
pub use gc::GcSummary;
pub use index::{Entry, InPack, INLINE_MAX};
pub use memory::MemBlockStore;
pub use pack::PackStorage;
pub use packed::PackStats;
pub use registry::NamespaceRecord;
pub use verify::{BlockReport, RefState, RepairSummary, VerifySummary};

/// How many puts of a `put_many` run at once by default.
pub const PUT_MANY_CONCURRENCY: usize = 8;

/// A store of IPFS blocks, bound to one namespace.
///
/// Every put verifies that the data hashes to its CID, every get verifies
/// what it returns. Blocks are keyed by multihash: two CIDs with the same
/// multihash and different codecs name the same stored block.
pub trait BlockStore: Send + Sync + 'static {
    /// Stores a block. Returns once it is durable (on a write quorum).
    fn put(&self, cid: &Cid, data: Bytes) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores several blocks. Either all are stored, or the error is
    /// [`Error::Partial`] and names exactly the blocks that were not.
    fn put_many(
        &self,
        blocks: Vec<(Cid, Bytes)>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let total = blocks.len();
            let results: Vec<_> = futures::stream::iter(blocks)
                .map(|(cid, data)| async move { (cid, self.put(&cid, data).await) })
                .buffer_unordered(PUT_MANY_CONCURRENCY)
                .collect()
                .await;
            let mut transient = true;
            let failed: Vec<(Cid, String)> = results
                .into_iter()
                .filter_map(|(cid, r)| {
                    let e = r.err()?;
                    transient &= e.is_transient();
                    Some((cid, e.to_string()))
                })
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Error::Partial {
                    failed,
                    total,
                    transient,
                })
            }
        }
    }

    /// The block's bytes, verified against the CID, or `None` if absent.
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Bytes>, Error>> + Send;

    /// Whether the block is stored.
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The block's size in bytes, or `None` if absent.
    fn get_size(&self, cid: &Cid) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Removes the block; returns whether it was there.
    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Every block stored, streamed as its multihash and size in bytes.
    fn list_sized(&self) -> BoxStream<'static, Result<(Multihash<64>, u64), Error>>;

    /// Every multihash stored, streamed.
    fn list(&self) -> BoxStream<'static, Result<Multihash<64>, Error>> {
        Box::pin(self.list_sized().map(|r| r.map(|(mh, _)| mh)))
    }
}

/// Checks a namespace name.
pub fn check_namespace(name: &str) -> Result<(), Error> {
    if crate::config::is_valid_namespace(name) {
        Ok(())
    } else {
        Err(Error::BadNamespace(name.chars().take(100).collect()))
    }
}

impl<T: BlockStore> BlockStore for std::sync::Arc<T> {
    fn put(&self, cid: &Cid, data: Bytes) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).put(cid, data)
    }
    fn put_many(
        &self,
        blocks: Vec<(Cid, Bytes)>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).put_many(blocks)
    }
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Bytes>, Error>> + Send {
        (**self).get(cid)
    }
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool, Error>> + Send {
        (**self).has(cid)
    }
    fn get_size(&self, cid: &Cid) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        (**self).get_size(cid)
    }
    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool, Error>> + Send {
        (**self).delete(cid)
    }
    fn list_sized(&self) -> BoxStream<'static, Result<(Multihash<64>, u64), Error>> {
        (**self).list_sized()
    }
}
