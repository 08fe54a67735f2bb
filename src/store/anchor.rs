//! Anchors: what keeps our block refs alive through Garage's own repairs.
//!
//! `garage repair block-refs` marks deleted every ref whose version has no
//! live entry in the `version` table, and `repair versions` does the same
//! to a version without a live object. So each ref points at an *anchor*:
//! an inline object in a synthetic bucket (no alias: no S3 key can see it)
//! plus its `version` entry. All of an anchor's identity is deterministic
//! and constant, timestamp included: re-inserting it with another timestamp
//! would strip the old version and kill every ref under it.
//!
//! A namespace spreads its refs over [`ANCHOR_SHARDS`] anchors per
//! generation, so an operator's `garage block purge` of one block (which
//! puts a delete marker on its anchor) reaches one shard, not the whole
//! namespace. A ref `(block, anchor)` once deleted can never be revived
//! (the flag is an OR), so re-putting a deleted block uses the next
//! generation's anchor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use garage_model::s3::block_ref_table::BlockRef;
use garage_model::s3::object_table::{
    Object, ObjectVersion, ObjectVersionData, ObjectVersionEncryption, ObjectVersionMeta,
    ObjectVersionMetaInner, ObjectVersionState,
};
use garage_model::s3::version_table::{Version, VersionBacklink};
use garage_table::EmptyKey;
use garage_util::data::{blake2sum, Hash, Uuid};
use tokio::sync::OnceCell;

use crate::garage::{error::deadline, Call, Connector, Error};

/// Anchors per namespace and generation.
pub const ANCHOR_SHARDS: u8 = 16;

/// Generations tried for one block before giving up. Deleted refs are
/// garbage-collected by Garage after a day, which frees their generation.
pub const MAX_GENERATIONS: u16 = 64;

/// The one timestamp every anchor version carries, forever.
const ANCHOR_TIMESTAMP: u64 = 1_764_000_000_000;

/// What an anchor object holds (inline; its size is what S3 counters see).
const ANCHOR_BODY: &[u8] = b"garage-ipfs anchor";

/// The synthetic bucket holding every anchor object.
pub(super) fn anchor_bucket() -> Uuid {
    blake2sum(b"garage-ipfs/anchor-bucket/v1")
}

/// One anchor: namespace, generation, shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AnchorId {
    /// The namespace's id.
    pub namespace: Uuid,
    /// Generation.
    pub generation: u16,
    /// Shard, `0..ANCHOR_SHARDS`.
    pub shard: u8,
}

impl AnchorId {
    /// The anchor of a block in a namespace and generation.
    pub fn of(namespace: Uuid, generation: u16, block: &Hash) -> Self {
        Self {
            namespace,
            generation,
            shard: block.as_slice()[0] % ANCHOR_SHARDS,
        }
    }

    /// The anchor object's key in the anchor bucket.
    pub fn object_key(&self) -> String {
        format!(
            "ns-{}/g{}/s{:02}",
            hex::encode(self.namespace.as_slice()),
            self.generation,
            self.shard
        )
    }

    /// The anchor's version uuid: what every ref under it points at.
    pub fn version_uuid(&self) -> Uuid {
        blake2sum(format!("garage-ipfs/anchor-version/v1/{}", self.object_key()).as_bytes())
    }

    fn object(&self) -> Object {
        let meta = ObjectVersionMeta {
            size: ANCHOR_BODY.len() as u64,
            etag: hex::encode(&blake2sum(ANCHOR_BODY).as_slice()[..16]),
            encryption: ObjectVersionEncryption::Plaintext {
                inner: ObjectVersionMetaInner {
                    headers: vec![],
                    checksum: None,
                    checksum_type: None,
                },
            },
        };
        Object::new(
            anchor_bucket(),
            self.object_key(),
            vec![ObjectVersion {
                uuid: self.version_uuid(),
                timestamp: ANCHOR_TIMESTAMP,
                state: ObjectVersionState::Complete(ObjectVersionData::Inline(
                    meta,
                    ANCHOR_BODY.to_vec(),
                )),
            }],
        )
    }

    fn version(&self) -> Version {
        Version::new(
            self.version_uuid(),
            VersionBacklink::Object {
                bucket_id: anchor_bucket(),
                key: self.object_key(),
            },
            false,
        )
    }
}

/// A block's generations in order, each with its anchor and the ref of
/// `refs` (the block's refs, all namespaces) that sits under it, if any:
/// the one walk that choosing a generation, deleting and verifying share.
pub(super) fn generations<'a>(
    namespace: Uuid,
    block: &'a Hash,
    refs: &'a [BlockRef],
) -> impl Iterator<Item = (u16, AnchorId, Option<&'a BlockRef>)> + 'a {
    (0..MAX_GENERATIONS).map(move |g| {
        let anchor = AnchorId::of(namespace, g, block);
        let uuid = anchor.version_uuid();
        (g, anchor, refs.iter().find(|r| r.version == uuid))
    })
}

/// Anchors this process has checked, and whether each is alive.
#[derive(Default)]
pub(super) struct Anchors {
    known: Mutex<HashMap<AnchorId, Arc<OnceCell<bool>>>>,
}

impl Anchors {
    /// Makes sure the anchor exists; returns whether it is alive (a dead
    /// anchor's version was marked deleted, e.g. by `garage block purge`,
    /// and must not take new refs). Checked once per anchor per process.
    pub(super) async fn ensure(&self, conn: &Connector, id: AnchorId) -> Result<bool, Error> {
        let cell = self.known.lock().unwrap().entry(id).or_default().clone();
        cell.get_or_try_init(|| ensure_anchor(conn, id))
            .await
            .copied()
    }
}

async fn ensure_anchor(conn: &Connector, id: AnchorId) -> Result<bool, Error> {
    let limit = conn.config.timeouts.rpc();
    let uuid = id.version_uuid();
    conn.call_counters().add(Call::TableRead);
    let existing = deadline(
        limit,
        "reading an anchor",
        conn.version.get(&uuid, &EmptyKey),
    )
    .await?;
    match existing {
        Some(v) if v.deleted.get() => {
            tracing::warn!(anchor = %id.object_key(), "anchor is dead; using the next generation");
            Ok(false)
        }
        Some(_) => Ok(true),
        None => {
            // Object first: a live version without its object is exactly
            // what `garage repair versions` deletes.
            conn.call_counters().add(Call::TableWrite);
            conn.call_counters().add(Call::TableWrite);
            deadline(
                limit,
                "writing an anchor object",
                conn.object.insert(&id.object()),
            )
            .await?;
            deadline(
                limit,
                "writing an anchor version",
                conn.version.insert(&id.version()),
            )
            .await?;
            tracing::debug!(anchor = %id.object_key(), "anchor created");
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_deterministic_and_distinct() {
        let ns = blake2sum(b"ns");
        let h = blake2sum(b"block");
        let a = AnchorId::of(ns, 0, &h);
        assert_eq!(a, AnchorId::of(ns, 0, &h));
        assert_eq!(a.version_uuid(), AnchorId::of(ns, 0, &h).version_uuid());
        assert_ne!(a.version_uuid(), AnchorId::of(ns, 1, &h).version_uuid());
        assert_ne!(
            a.version_uuid(),
            AnchorId::of(blake2sum(b"other"), 0, &h).version_uuid()
        );
        assert!(a.shard < ANCHOR_SHARDS);
    }

    /// An anchor is the same bytes in every process and every release:
    /// what Garage stores for a fixed anchor is pinned here. If this
    /// changes, connectors of two versions would write two versions of
    /// one anchor object, and the later one would strip the refs under
    /// the earlier one (module docs).
    #[test]
    fn anchor_rows_are_pinned_bytes() {
        use garage_util::migrate::Migrate;
        let a = AnchorId::of(blake2sum(b"ns"), 3, &blake2sum(b"block"));
        let digest = |bytes: Vec<u8>| hex::encode(blake2sum(&bytes).as_slice());
        assert_eq!(
            [
                a.object_key(),
                hex::encode(a.version_uuid().as_slice()),
                digest(a.object().encode().unwrap()),
                digest(a.version().encode().unwrap()),
            ],
            [
                ANCHOR_KEY,
                ANCHOR_VERSION_UUID,
                ANCHOR_OBJECT_DIGEST,
                ANCHOR_VERSION_DIGEST
            ]
        );
    }

    const ANCHOR_KEY: &str =
        "ns-46727df95bb60563fa627f4844bea391be1b6e6232a73aa185aea2cf9e0832b3/g3/s12";
    const ANCHOR_VERSION_UUID: &str =
        "13e74441cbf2782819b83a863569e75ac15af21f7879214d89262ad35ea5685d";
    const ANCHOR_OBJECT_DIGEST: &str =
        "c8e2b2cc1872c2ea39b7ae39c46b677e869dbea94819d94c4c8e3afe832cdfc4";
    const ANCHOR_VERSION_DIGEST: &str =
        "77b15a8fa3ea479374cc210fb18e83865ed0f7ba1a7c67a53835b659fec68733";
}
