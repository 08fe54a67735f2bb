//! DAGs and CARs: streaming a DAG out of a store as a CARv1, and importing
//! a CARv1 into a store. The links of each block come from [`crate::ipld`].

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use futures::stream::BoxStream;
use tokio::io::AsyncRead;

use crate::cid as cidutil;
use crate::ipld::{links, LinkError};
use crate::store::{BlockStore, Error as StoreError};

/// Errors of DAG walks and CAR imports.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// A block's links could not be decoded.
    #[error(transparent)]
    Decode(#[from] LinkError),
    /// A block the DAG needs is not stored.
    #[error("block {0} of the DAG is not stored")]
    Missing(Cid),
    /// The CAR is not a valid CARv1 (truncated, corrupt, oversized section).
    #[error("invalid CAR: {0}")]
    Car(String),
    /// The CAR's blocks do not make up its roots' DAGs.
    #[error(
        "incomplete CAR: block {missing} (linked from {parent}) is neither in the CAR nor stored"
    )]
    Incomplete {
        /// The block nobody provided.
        missing: String,
        /// A block that links to it.
        parent: String,
    },
    /// The store refused a block or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How much of a DAG a CAR carries (the gateway's `dag-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The root block only.
    Block,
    /// The whole DAG.
    All,
}

/// A CARv1 header naming `root`.
pub fn car_header(root: &Cid) -> Bytes {
    let header = iroh_car::CarHeader::new_v1(vec![*root])
        .encode()
        .expect("a CAR header with one CID encodes");
    let mut buf = BytesMut::with_capacity(header.len() + 10);
    put_varint(&mut buf, header.len() as u64);
    buf.put_slice(&header);
    buf.freeze()
}

/// One CARv1 section: length, CID, data.
pub fn car_section(cid: &Cid, data: &[u8]) -> Bytes {
    let c = cid.to_bytes();
    let mut buf = BytesMut::with_capacity(c.len() + data.len() + 10);
    put_varint(&mut buf, (c.len() + data.len()) as u64);
    buf.put_slice(&c);
    buf.put_slice(data);
    buf.freeze()
}

fn put_varint(buf: &mut BytesMut, n: u64) {
    let mut tmp = unsigned_varint::encode::u64_buffer();
    buf.put_slice(unsigned_varint::encode::u64(n, &mut tmp));
}

/// Streams the DAG under `root` as a CARv1: depth-first, each block once,
/// identity blocks walked but never emitted. Returns `None` if the root is
/// not stored, so callers can answer 404 before committing to a 200. A
/// block missing deeper down ends the stream with an error (the CAR is then
/// truncated, which clients detect).
pub async fn car_stream<S: BlockStore + Clone>(
    store: S,
    root: Cid,
    scope: Scope,
) -> Result<Option<BoxStream<'static, Result<Bytes, DagError>>>, DagError> {
    let Some(root_data) = store.get(&root).await? else {
        return Ok(None);
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, DagError>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(car_header(&root))).await.is_err() {
            return;
        }
        let mut seen = HashSet::new();
        let mut stack = vec![(root, Some(root_data))];
        while let Some((cid, data)) = stack.pop() {
            if !seen.insert(cid.hash().to_bytes()) {
                continue;
            }
            let data = match data {
                Some(d) => d,
                None => match store.get(&cid).await {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        let _ = tx.send(Err(DagError::Missing(cid))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
            };
            if !cidutil::is_identity(&cid) && tx.send(Ok(car_section(&cid, &data))).await.is_err() {
                return;
            }
            if scope == Scope::All {
                match links(&cid, &data) {
                    Ok(l) => stack.extend(l.into_iter().rev().map(|c| (c, None))),
                    Err(e) => {
                        let _ = tx.send(Err(DagError::Decode(e))).await;
                        return;
                    }
                }
            }
        }
    });
    Ok(Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        rx,
    ))))
}

/// What an import stored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    /// The CAR's roots.
    pub roots: Vec<String>,
    /// Blocks read from the CAR (identity blocks included, duplicates not).
    pub blocks: u64,
    /// Bytes of block data read.
    pub bytes: u64,
}

/// Blocks per `put_many` batch of an import.
const IMPORT_BATCH: usize = 64;
/// Bytes per batch, at most (bounds memory in flight).
const IMPORT_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Imports a CARv1: every block is verified against its CID and stored.
/// Fails on a malformed or truncated CAR, on a block that does not match
/// its CID, and on a CAR that does not carry its roots' whole DAGs (unless
/// the missing blocks are already stored). Blocks stored before a failure
/// stay stored (they may have been stored before), but the import is not
/// reported as done. `progress` is called after each batch.
pub async fn import_car<S: BlockStore>(
    store: &S,
    reader: impl AsyncRead + Unpin + Send,
    mut progress: impl FnMut(&ImportSummary) + Send,
) -> Result<ImportSummary, DagError> {
    let mut car = iroh_car::CarReader::new(reader)
        .await
        .map_err(|e| DagError::Car(e.to_string()))?;
    let mut summary = ImportSummary {
        roots: car.header().roots().iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    let mut have = HashSet::new();
    let mut wanted: Vec<(Cid, Cid)> = car.header().roots().iter().map(|r| (*r, *r)).collect();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let next = car
            .next_block()
            .await
            .map_err(|e| DagError::Car(e.to_string()))?;
        let done = next.is_none();
        if let Some((cid, data)) = next {
            if have.insert(cid.hash().to_bytes()) {
                cidutil::verify(&cid, &data).map_err(StoreError::from)?;
                wanted.extend(links(&cid, &data)?.into_iter().map(|l| (l, cid)));
                summary.blocks += 1;
                summary.bytes += data.len() as u64;
                batch_bytes += data.len();
                batch.push((cid, Bytes::from(data)));
            }
        }
        if !batch.is_empty()
            && (done || batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES)
        {
            store.put_many(std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
            progress(&summary);
        }
        if done {
            break;
        }
    }
    // Every block the roots' DAGs link to is in the CAR or already stored.
    let mut checked = HashSet::new();
    for (missing, parent) in wanted {
        let key = missing.hash().to_bytes();
        if cidutil::is_identity(&missing) || have.contains(&key) || !checked.insert(key) {
            continue;
        }
        if !store.has(&missing).await? {
            return Err(DagError::Incomplete {
                missing: missing.to_string(),
                parent: parent.to_string(),
            });
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::codec;
    use crate::store::MemBlockStore;
    use futures::TryStreamExt;
    use ipld_core::ipld::Ipld;
    use std::sync::Arc;

    fn cbor_node(links: &[Cid], payload: &str) -> (Cid, Bytes) {
        let mut map = std::collections::BTreeMap::new();
        map.insert("payload".to_string(), Ipld::String(payload.into()));
        map.insert(
            "links".to_string(),
            Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
        (
            cidutil::compute(codec::DAG_CBOR, 0x12, &data).unwrap(),
            Bytes::from(data),
        )
    }

    async fn sample(store: &Arc<MemBlockStore>) -> (Cid, Vec<(Cid, Bytes)>) {
        let leaf1 = Bytes::from_static(b"leaf one");
        let leaf2 = Bytes::from_static(b"leaf two");
        let c1 = cidutil::compute(codec::RAW, 0x12, &leaf1).unwrap();
        let c2 = cidutil::compute(codec::RAW, 0x12, &leaf2).unwrap();
        let (mid, mid_data) = cbor_node(&[c1, c2], "mid");
        let (root, root_data) = cbor_node(&[mid, c1], "root");
        let blocks = vec![(root, root_data), (mid, mid_data), (c1, leaf1), (c2, leaf2)];
        for (c, d) in &blocks {
            store.put(c, d.clone()).await.unwrap();
        }
        (root, blocks)
    }

    /// The CAR of `root`, as its parts (header, then one per block).
    async fn car_parts(store: &Arc<MemBlockStore>, root: Cid, scope: Scope) -> Vec<Bytes> {
        car_stream(store.clone(), root, scope)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn export_then_import_round_trips() {
        let src = Arc::new(MemBlockStore::new());
        let (root, blocks) = sample(&src).await;
        let parts = car_parts(&src, root, Scope::All).await;
        // Each block once, depth first in link order (c1 is linked twice).
        let order: Vec<Cid> = parts[1..]
            .iter()
            .map(|p| {
                let (_, rest) = unsigned_varint::decode::u64(p).unwrap();
                Cid::read_bytes(rest).unwrap()
            })
            .collect();
        let expected: Vec<Cid> = [0, 1, 2, 3].iter().map(|i| blocks[*i].0).collect();
        assert_eq!(order, expected, "root, mid, leaf one, leaf two");
        let car: Vec<u8> = parts.concat();
        let dst = MemBlockStore::new();
        let summary = import_car(&dst, &car[..], |_| ()).await.unwrap();
        assert_eq!(summary.blocks, 4);
        assert_eq!(summary.roots, vec![root.to_string()]);
        for (c, d) in &blocks {
            assert_eq!(dst.get(c).await.unwrap().as_ref(), Some(d));
        }
        // dag-scope=block carries the root only.
        assert_eq!(car_parts(&src, root, Scope::Block).await.len(), 2);
    }

    #[tokio::test]
    async fn truncated_corrupt_and_incomplete_cars_are_refused() {
        let src = Arc::new(MemBlockStore::new());
        let (root, _) = sample(&src).await;
        let car: Vec<u8> = car_parts(&src, root, Scope::All).await.concat();
        // Cut inside the last block.
        let err = import_car(&MemBlockStore::new(), &car[..car.len() - 3], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Car(_)), "{err}");
        // Flip a byte of block data: the block no longer matches its CID.
        let mut bad = car.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let err = import_car(&MemBlockStore::new(), &bad[..], |_| ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match CID"), "{err}");
        // Header and root only: the rest of the DAG is missing.
        let root_only: Vec<u8> = car_parts(&src, root, Scope::Block).await.concat();
        let err = import_car(&MemBlockStore::new(), &root_only[..], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Incomplete { .. }), "{err}");
        // Not a CAR at all.
        let err = import_car(&MemBlockStore::new(), &b"hello"[..], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Car(_)), "{err}");
    }

    #[tokio::test]
    async fn missing_root_is_none_and_identity_is_not_emitted() {
        let store = Arc::new(MemBlockStore::new());
        let absent = cidutil::compute(codec::RAW, 0x12, b"absent").unwrap();
        assert!(car_stream(store.clone(), absent, Scope::All)
            .await
            .unwrap()
            .is_none());
        let probe = cidutil::parse("bafkqaaa").unwrap();
        let parts: Vec<Bytes> = car_stream(store, probe, Scope::All)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(parts.len(), 1, "header only");
    }
}
