//! The `blockstore` crate's `Blockstore` trait (0.8), used by Rust IPFS
//! stacks such as beetswap, on our stores.
//!
//! That trait is keyed by full CID and generic over the CID's multihash
//! size; ours is keyed by multihash (64-byte maximum). Errors become
//! `StoredDataError` (bad input: `CidError`), with the message kept.

use blockstore::block::CidError as BsCidError;
use blockstore::{Blockstore, Error as BsError};
use bytes::Bytes;
use cid::{Cid, CidGeneric};

use super::{BlockStore, Error, MemBlockStore, Namespace};

fn to_cid<const S: usize>(cid: &CidGeneric<S>) -> Result<Cid, BsError> {
    Cid::try_from(cid.to_bytes()).map_err(|_| BsError::CidTooLarge)
}

fn to_bs(e: Error) -> BsError {
    if e.is_bad_input() {
        BsError::CidError(BsCidError::InvalidCid(e.to_string()))
    } else {
        BsError::StoredDataError(e.to_string())
    }
}

macro_rules! impl_blockstore {
    ($t:ty) => {
        impl Blockstore for $t {
            async fn get<const S: usize>(
                &self,
                cid: &CidGeneric<S>,
            ) -> Result<Option<Vec<u8>>, BsError> {
                let cid = to_cid(cid)?;
                Ok(BlockStore::get(self, &cid)
                    .await
                    .map_err(to_bs)?
                    .map(|b| b.to_vec()))
            }

            async fn put_keyed<const S: usize>(
                &self,
                cid: &CidGeneric<S>,
                data: &[u8],
            ) -> Result<(), BsError> {
                let cid = to_cid(cid)?;
                BlockStore::put(self, &cid, Bytes::copy_from_slice(data))
                    .await
                    .map_err(to_bs)
            }

            async fn remove<const S: usize>(&self, cid: &CidGeneric<S>) -> Result<(), BsError> {
                let cid = to_cid(cid)?;
                BlockStore::delete(self, &cid)
                    .await
                    .map_err(to_bs)
                    .map(|_| ())
            }

            async fn has<const S: usize>(&self, cid: &CidGeneric<S>) -> Result<bool, BsError> {
                let cid = to_cid(cid)?;
                BlockStore::has(self, &cid).await.map_err(to_bs)
            }

            async fn close(self) -> Result<(), BsError> {
                Ok(())
            }
        }
    };
}

impl_blockstore!(Namespace);
impl_blockstore!(MemBlockStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_speaks_the_trait() {
        let s = MemBlockStore::new();
        let cid = crate::cid::compute(crate::cid::codec::RAW, 0x12, b"trait").unwrap();
        Blockstore::put_keyed(&s, &cid, b"trait").await.unwrap();
        assert!(Blockstore::has(&s, &cid).await.unwrap());
        assert_eq!(
            Blockstore::get(&s, &cid).await.unwrap(),
            Some(b"trait".to_vec())
        );
        assert!(Blockstore::put_keyed(&s, &cid, b"other").await.is_err());
        Blockstore::remove(&s, &cid).await.unwrap();
        assert!(!Blockstore::has(&s, &cid).await.unwrap());
    }
}
