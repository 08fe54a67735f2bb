//! [`MemBlockStore`]: blocks in a map, for unit tests of the layers above
//! the store. Same contract as the Garage store: verified puts and gets,
//! keyed by multihash.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use cid::Cid;
use futures::stream::BoxStream;
use multihash::Multihash;

use super::{BlockStore, Error};
use crate::cid as cidutil;

/// An in-memory block store.
#[derive(Default)]
pub struct MemBlockStore {
    blocks: Mutex<BTreeMap<Vec<u8>, Bytes>>,
}

impl MemBlockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BlockStore for MemBlockStore {
    async fn put(&self, cid: &Cid, data: Bytes) -> Result<(), Error> {
        cidutil::verify(cid, &data)?;
        if !cidutil::is_identity(cid) {
            self.blocks
                .lock()
                .unwrap()
                .insert(cid.hash().to_bytes(), data);
        }
        Ok(())
    }

    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, Error> {
        cidutil::check_supported(cid)?;
        if cidutil::is_identity(cid) {
            return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
        }
        Ok(self
            .blocks
            .lock()
            .unwrap()
            .get(&cid.hash().to_bytes())
            .cloned())
    }

    async fn has(&self, cid: &Cid) -> Result<bool, Error> {
        Ok(self.get_size(cid).await?.is_some())
    }

    async fn get_size(&self, cid: &Cid) -> Result<Option<u64>, Error> {
        Ok(self.get(cid).await?.map(|b| b.len() as u64))
    }

    async fn delete(&self, cid: &Cid) -> Result<bool, Error> {
        cidutil::check_supported(cid)?;
        Ok(self
            .blocks
            .lock()
            .unwrap()
            .remove(&cid.hash().to_bytes())
            .is_some())
    }

    fn list_sized(&self) -> BoxStream<'static, Result<(Multihash<64>, u64), Error>> {
        let keys: Vec<_> = self
            .blocks
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let mh = Multihash::from_bytes(k).expect("stored keys are multihashes");
                Ok((mh, v.len() as u64))
            })
            .collect();
        Box::pin(futures::stream::iter(keys))
    }
}
