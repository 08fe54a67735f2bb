//! Block transfers: `PutBlock` to the layout's nodes with the write quorum,
//! `GetBlock` from one node or with fall-through.
//!
//! This is what `BlockManager::rpc_put_block` does, which we cannot call:
//! constructing a `BlockManager` would register and serve the block endpoint.

use bytes::Bytes;
use garage_block::manager::BlockRpc;
use garage_net::message::{Req, PRIO_NORMAL, PRIO_SECONDARY};
use garage_rpc::RequestStrategy;
use garage_util::data::{Hash, Uuid};

use super::error::{deadline, Error};
use super::{Call, Connector};

/// A `PutBlock` request carrying `data` uncompressed.
fn put_block_request(hash: Hash, data: Bytes) -> Result<Req<BlockRpc>, Error> {
    // `DataBlockHeader` is public but lives in a private module, so it
    // cannot be named; serde can still build its `Plain` variant. Plain
    // blocks are stored uncompressed, so on-disk bytes are the block.
    let header = serde_json::from_str("\"Plain\"").expect("DataBlockHeader::Plain");
    Ok(Req::new(BlockRpc::PutBlock { hash, header })?.with_stream_from_buffer(data))
}

impl Connector {
    /// The storage nodes of a block in the current layout, in the order
    /// reads should try them (connected, low-latency nodes first).
    pub(crate) fn block_nodes(&self, hash: &Hash) -> Result<Vec<Uuid>, Error> {
        let helper = self.system.rpc_helper();
        Ok(helper.block_read_nodes_of(hash, helper)?)
    }

    /// Writes a block to its nodes and returns once the write quorum holds
    /// it; the remaining copies finish in the background.
    pub(crate) async fn rpc_put_block(&self, hash: Hash, data: Bytes) -> Result<(), Error> {
        let who: Vec<Uuid> = self
            .system
            .cluster_layout()
            .current()?
            .nodes_of(&hash)
            .collect();
        let req = put_block_request(hash, data)?;
        let quorum = self.write_quorum()?;
        self.calls.add(Call::BlockPut);
        let limit = self.config.timeouts.block();
        let strategy = RequestStrategy::with_priority(PRIO_NORMAL | PRIO_SECONDARY)
            .with_quorum(quorum)
            .with_custom_timeout(limit);
        deadline(
            limit,
            "writing a block to a quorum of nodes",
            self.system
                .rpc_helper()
                .try_write_many_sets(&self.block_ep, &[who], req, strategy),
        )
        .await?;
        Ok(())
    }

    /// Writes a block to one node only (repair of a missing replica).
    pub(crate) async fn rpc_put_block_to(
        &self,
        node: Uuid,
        hash: Hash,
        data: Bytes,
    ) -> Result<(), Error> {
        let req = put_block_request(hash, data)?;
        self.calls.add(Call::BlockPut);
        let resp = deadline(
            self.config.timeouts.block(),
            "writing a replica",
            self.block_ep
                .call_streaming(&node.into(), req, PRIO_NORMAL | PRIO_SECONDARY),
        )
        .await?;
        resp.into_msg()?;
        Ok(())
    }

    /// Reads a block from one node.
    pub(crate) async fn rpc_get_block_from(&self, node: Uuid, hash: Hash) -> Result<Bytes, Error> {
        let limit = self.config.timeouts.block();
        self.calls.add(Call::BlockGet);
        deadline(limit, "reading a block from a node", async {
            let resp = self
                .block_ep
                .call_streaming(
                    &node.into(),
                    BlockRpc::GetBlock(hash, None),
                    PRIO_NORMAL | PRIO_SECONDARY,
                )
                .await?;
            let (msg, stream) = resp.into_parts();
            let header = match msg? {
                BlockRpc::PutBlock { hash: h, header } if h == hash => header,
                other => {
                    return Err(Error::Internal(format!(
                        "unexpected answer to GetBlock: {other:?}"
                    )))
                }
            };
            let stream =
                stream.ok_or_else(|| Error::Internal("GetBlock answer without data".into()))?;
            let bytes = garage_net::stream::read_stream_to_end(stream)
                .await
                .map_err(|e| Error::Connection(format!("reading block stream: {e}")))?
                .into_bytes();
            if header.is_compressed() {
                // Garage's own S3 writes may be compressed; ours never are.
                let plain = zstd::stream::decode_all(&bytes[..])
                    .map_err(|e| Error::Corrupt(format!("compressed block: {e}")))?;
                Ok(Bytes::from(plain))
            } else {
                Ok(bytes)
            }
        })
        .await
    }

    /// A block's bytes from the data directories of a storage node on this
    /// host ([`crate::Config::colocated_data_dirs`]), where Garage keeps
    /// it as `<dir>/<byte 0>/<byte 1>/<hash>` (hex), plain or `.zst`.
    /// `None` when not configured, absent or unreadable: the caller checks
    /// the bytes and asks the cluster on any doubt. Garage writes a block
    /// file under a temporary name and renames it, so a file is never seen
    /// half written.
    pub(crate) async fn read_colocated(&self, hash: &Hash) -> Option<Bytes> {
        if self.config.colocated_data_dirs.is_empty() {
            return None;
        }
        let dirs = self.config.colocated_data_dirs.clone();
        let hash = *hash;
        let found = tokio::task::spawn_blocking(move || {
            let name = hex::encode(hash.as_slice());
            for dir in &dirs {
                let path = dir
                    .join(hex::encode(&hash.as_slice()[0..1]))
                    .join(hex::encode(&hash.as_slice()[1..2]))
                    .join(&name);
                match std::fs::read(&path) {
                    Ok(bytes) => return Some(Bytes::from(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::debug!(path = %path.display(), cause = %e, "co-located block unreadable");
                        continue;
                    }
                }
                if let Ok(compressed) = std::fs::read(path.with_extension("zst")) {
                    match zstd::stream::decode_all(&compressed[..]) {
                        Ok(plain) => return Some(Bytes::from(plain)),
                        Err(e) => tracing::debug!(cause = %e, "co-located block does not decompress"),
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let i = usize::from(found.is_none());
        self.colocated[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        found
    }

    /// Reads a block, trying its nodes in turn until one returns bytes that
    /// `valid` accepts. Errors and invalid copies fall through to the next.
    pub(crate) async fn rpc_get_block(
        &self,
        hash: Hash,
        valid: impl Fn(&[u8]) -> bool,
    ) -> Result<Bytes, Error> {
        for node in self.block_nodes(&hash)? {
            match self.rpc_get_block_from(node, hash).await {
                Ok(bytes) if valid(&bytes) => return Ok(bytes),
                Ok(_) => tracing::warn!(
                    node = %hex::encode(&node.as_slice()[..8]),
                    block = %hex::encode(hash.as_slice()),
                    "node returned a copy that does not match its CID; trying the next"
                ),
                Err(e) => tracing::debug!(
                    node = %hex::encode(&node.as_slice()[..8]),
                    cause = %e,
                    "block read failed; trying the next node"
                ),
            }
        }
        Err(Error::MissingBlock(hash))
    }
}
