//! [`GarageStore`]: blocks in a Garage cluster's block manager, refs under
//! anchors, the CID index in K2V.
//!
//! A put writes, in this order: the ref (so a block whose refcount is
//! pending deletion after an earlier delete cannot be collected under us),
//! the block (to a write quorum), then the index entry. A crash leaves at
//! most a ref without an index entry, never an index entry for a block
//! that is not stored. A delete goes the other way: index first, then refs.
//! Blocks of at most [`INLINE_MAX`] bytes skip the ref and the block: the
//! index entry holds them, so their put is one index write.
//!
//! Ref and index writes go through the connector's group commit, so
//! concurrent puts share requests. With a presence filter, a put of a block
//! the filter knows is absent skips the index read (a blind write), and a
//! bounded cache (`cache.rs`) keeps index entries and block bytes of
//! recent lookups; both answer only while the filter does, so they are
//! exactly as fresh as it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::stream::BoxStream;
use garage_model::k2v::causality::CausalContext;
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_model::s3::block_ref_table::BlockRef;
use garage_table::EnumerationOrder;
use garage_util::crdt;
use garage_util::data::{blake2sum, Hash, Uuid};
use multihash::Multihash;
use tokio_stream::wrappers::ReceiverStream;

use super::anchor::{self, AnchorId, Anchors};
use super::cache::BlockCache;
use super::filter::{FilterStats, NsFilter};
use super::index::{self, Entry, INLINE_MAX};
use super::pack::Located;
use super::packed::NsPacks;
use super::{check_namespace, BlockStore, Error};
use crate::cid as cidutil;
use crate::garage::k2v::QuorumRead;
use crate::garage::{error::deadline, Call, Connector, Op};

/// Namespaces with a presence filter, at most, per store.
pub(super) const MAX_FILTERED_NAMESPACES: usize = 64;

/// Namespaces whose packs (writer and map) a store shares between
/// handles, at most.
const MAX_PACKED_NAMESPACES: usize = 1024;

/// Index entries fetched per listing request.
const LIST_PAGE: usize = 1000;

/// Bytes the block cache of a filtered store holds, at most.
pub(super) const CACHE_BYTES: usize = 64 << 20;

/// Block data in flight in puts, at most, in KiB (back-pressure: further
/// puts wait).
pub(super) const IN_FLIGHT_KIB: usize = 64 << 10;

/// The store: one connector, any number of namespaces.
pub struct GarageStore {
    conn: Arc<Connector>,
    anchors: Anchors,
    /// Presence filters per namespace, when enabled (`with_filters`).
    filters: Option<Mutex<HashMap<String, Arc<NsFilter>>>>,
    /// Recent entries and blocks, used only where a filter answers.
    pub(super) cache: BlockCache,
    /// Bytes of block data in flight in puts, bounded.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Namespaces this process has seen in the registry.
    pub(super) registered: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Packed blocks per namespace: the writer and the map.
    packs: Mutex<HashMap<String, Arc<NsPacks>>>,
    /// Whether small blocks are packed, and where packs' bytes go
    /// ([`crate::config::Config::pack_small_blocks`],
    /// [`crate::config::Config::pack_storage`]).
    pub(super) packing: Option<super::PackStorage>,
}

/// What [`Namespace::lookup`] found of a block.
pub(super) struct Found {
    pub(super) entry: Entry,
    /// The bytes, when the cache had them.
    data: Option<Bytes>,
    /// The filter epoch to cache under (none while the filter is not ready).
    epoch: Option<u32>,
    /// Where the pack map has it (then `entry` describes the first).
    packed: Vec<Located>,
}

/// A namespace of a [`GarageStore`]; cheap to clone.
#[derive(Clone)]
pub struct Namespace {
    pub(super) store: Arc<GarageStore>,
    name: Arc<str>,
    id: Uuid,
    pub(super) filter: Option<Arc<NsFilter>>,
    pub(super) packs: Arc<NsPacks>,
}

impl GarageStore {
    /// A store over a joined connector, every lookup going to the index.
    pub fn new(conn: Arc<Connector>) -> Arc<Self> {
        Self::build(conn, false)
    }

    /// A store that keeps an in-memory presence filter per namespace, so
    /// that lookups of absent blocks cost no cluster request (see
    /// `filter.rs`). For long-running processes: each filter lists its
    /// namespace once and then polls its counters every second.
    pub fn with_filters(conn: Arc<Connector>) -> Arc<Self> {
        Self::build(conn, true)
    }

    fn build(conn: Arc<Connector>, filters: bool) -> Arc<Self> {
        let packing = conn
            .config
            .pack_small_blocks
            .then_some(conn.config.pack_storage);
        Arc::new(Self {
            packs: Default::default(),
            packing,
            conn,
            anchors: Anchors::default(),
            filters: filters.then(Default::default),
            cache: BlockCache::new(if filters { CACHE_BYTES } else { 0 }),
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB)),
            registered: Default::default(),
        })
    }

    /// The connector underneath.
    pub fn connector(&self) -> &Arc<Connector> {
        &self.conn
    }

    /// Bytes of block data currently in flight in puts.
    pub fn bytes_in_flight(&self) -> u64 {
        (IN_FLIGHT_KIB - self.in_flight.available_permits()) as u64 * 1024
    }

    /// The presence filters' counters, per namespace.
    pub fn filter_stats_all(&self) -> Vec<(String, FilterStats)> {
        let Some(filters) = &self.filters else {
            return Vec::new();
        };
        let mut all: Vec<_> = filters
            .lock()
            .unwrap()
            .iter()
            .map(|(name, f)| (name.clone(), f.stats()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Empties the block cache and switches it on or off (the benchmark
    /// measures cold reads with it off).
    pub fn reset_cache(&self, enabled: bool) {
        self.cache.clear();
        self.cache.set_enabled(enabled);
    }

    /// The block cache's hit and miss counters.
    pub fn cache_stats(&self) -> super::cache::CacheStats {
        self.cache.stats()
    }

    /// A handle on one namespace. Namespaces need no creation: an empty one
    /// is simply one with no entries.
    pub fn namespace(self: &Arc<Self>, name: &str) -> Result<Namespace, Error> {
        let mut ns = self.namespace_unfiltered(name)?;
        if let Some(filters) = &self.filters {
            let mut filters = filters.lock().unwrap();
            // Each filter lists its namespace and polls once a second: cap
            // them, so that clients naming many namespaces cannot make the
            // daemon poll without bound. Beyond the cap, lookups go to the
            // index.
            if filters.contains_key(name) || filters.len() < MAX_FILTERED_NAMESPACES {
                let f = filters
                    .entry(name.to_string())
                    .or_insert_with(|| NsFilter::start(Arc::downgrade(self), name.to_string()));
                ns.filter = Some(f.clone());
            }
        }
        Ok(ns)
    }

    pub(super) fn namespace_unfiltered(self: &Arc<Self>, name: &str) -> Result<Namespace, Error> {
        check_namespace(name)?;
        let packs = {
            let mut all = self.packs.lock().unwrap();
            match all.get(name) {
                Some(p) => p.clone(),
                // Names come from clients (gRPC): beyond the cap, a handle
                // gets packs of its own, correct but not shared (its map is
                // built again on need).
                None if all.len() >= MAX_PACKED_NAMESPACES => {
                    NsPacks::new(Arc::downgrade(self), name.to_string())
                }
                None => all
                    .entry(name.to_string())
                    .or_insert_with(|| NsPacks::new(Arc::downgrade(self), name.to_string()))
                    .clone(),
            }
        };
        Ok(Namespace {
            store: self.clone(),
            name: name.into(),
            id: index::namespace_id(name),
            filter: None,
            packs,
        })
    }
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's id (its index bucket id).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The presence filter's counters, if this store keeps filters.
    pub fn filter_stats(&self) -> Option<FilterStats> {
        self.filter.as_ref().map(|f| f.stats())
    }

    /// A block's index entry, unless the filter knows it is absent (then
    /// no cluster request at all), with its bytes when the cache holds
    /// them, and the epoch under which what is found may be cached.
    pub(super) async fn lookup(
        &self,
        mh: &Multihash<64>,
        need_data: bool,
    ) -> Result<Option<Found>, Error> {
        // Packed blocks first (the filter does not hold them). A filter
        // that answers keeps the map current, so the map answers from
        // memory; without one, nothing follows other connectors' deletes,
        // so a quorum read of the manifest confirms what the map says.
        let located = self.packs.locate(mh);
        if !located.is_empty() {
            // A compaction's unfinished new pack is not trusted from memory
            // (its slots count only where their source agrees).
            let followed = self.filter.as_ref().is_some_and(|f| f.answers())
                && located.iter().all(|l| !l.pending);
            if followed || self.confirm_packed(mh).await? {
                let packed = self.packs.locate(mh);
                if !packed.is_empty() {
                    return Ok(Some(Found::packed(packed)));
                }
            }
        }
        let filtered = self.filter.as_ref().map(|f| (f, f.check(mh)));
        let epoch = match filtered {
            Some((_, Some((false, _)))) => return Ok(None),
            Some((_, Some((true, epoch)))) => Some(epoch),
            _ => None,
        };
        if let Some(epoch) = epoch {
            if let Some((entry, data)) = self.store.cache.lookup(self.id, mh, epoch, need_data) {
                return Ok(Some(Found {
                    entry,
                    data,
                    epoch: Some(epoch),
                    packed: Vec::new(),
                }));
            }
        }
        let (entry, _) = self.entry(mh).await?;
        match (&entry, filtered, epoch) {
            (None, Some((f, Some(_))), _) => f.note_false_positive(),
            (Some(e), _, Some(epoch)) => self.store.cache.put_entry(self.id, mh, epoch, e),
            _ => (),
        }
        if entry.is_none() && epoch.is_none() {
            // No filter answering, so no poller keeping the map current:
            // it follows the counters now.
            self.sync_packs().await?;
            let packed = self.packs.locate(mh);
            if !packed.is_empty() {
                return Ok(Some(Found::packed(packed)));
            }
        }
        Ok(entry.map(|entry| Found {
            entry,
            data: None,
            epoch,
            packed: Vec::new(),
        }))
    }

    /// A block in a new pack: no ref can exist for it (see
    /// [`super::pack::PackBuilder::unique`]), so its placement needs no
    /// read, only a live anchor of generation 0.
    pub(super) async fn new_block_placement(
        &self,
        cid: &Cid,
        hash: &Hash,
    ) -> Result<Placement, Error> {
        for (g, anchor, _) in anchor::generations(self.id, hash, &[]) {
            if self.store.anchors.ensure(self.conn(), anchor).await? {
                return Ok(Placement {
                    generation: g,
                    new_ref: true,
                    unknown: true,
                });
            }
        }
        Err(Error::GenerationsExhausted(*cid))
    }

    /// The filter's epoch for a multihash's shard when the filter answers
    /// (cached data is valid only under the epoch it was cached in).
    fn cache_epoch(&self, mh: &Multihash<64>) -> Option<u32> {
        let f = self.filter.as_ref()?;
        f.answers().then(|| f.epoch(mh))
    }

    pub(super) fn conn(&self) -> &Connector {
        &self.store.conn
    }

    /// The index item of a multihash, as read from a quorum (monotonic:
    /// see [`Connector::rpc_k2v_get`]).
    async fn read_item(&self, mh: &Multihash<64>) -> Result<QuorumRead<Option<K2VItem>>, Error> {
        let part = index::partition(self.id, mh);
        Ok(self.conn().rpc_k2v_get(&part, &cidutil::dskey(mh)).await?)
    }

    /// The live index entry of a multihash, with the item's causal context.
    pub async fn entry(
        &self,
        mh: &Multihash<64>,
    ) -> Result<(Option<Entry>, Option<CausalContext>), Error> {
        let (entry, context, _) = self.entry_read(mh).await?;
        Ok((entry, context))
    }

    /// [`Self::entry`], and whether the entry is known to be on a write
    /// quorum ([`QuorumRead::settled`]).
    async fn entry_read(
        &self,
        mh: &Multihash<64>,
    ) -> Result<(Option<Entry>, Option<CausalContext>, bool), Error> {
        let read = self.read_item(mh).await?;
        let Some(item) = read.value else {
            return Ok((None, None, true));
        };
        let entry = index::live_entry(&item).map_err(|e| Error::BadIndexEntry {
            key: cidutil::dskey(mh),
            reason: e.to_string(),
        })?;
        Ok((entry, Some(item.causal_context()), read.settled))
    }

    pub(super) async fn rpc_index_insert(
        &self,
        mh: &Multihash<64>,
        context: Option<CausalContext>,
        value: DvvsValue,
    ) -> Result<(), Error> {
        let partition = index::partition(self.id, mh);
        self.conn()
            .rpc_k2v_insert(partition, cidutil::dskey(mh), context, value)
            .await?;
        Ok(())
    }

    /// All refs of a block, live and deleted, in every namespace.
    pub(super) async fn refs_of(&self, hash: &Hash) -> Result<Vec<BlockRef>, Error> {
        let conn = self.conn();
        conn.call_counters().add(Call::TableRead);
        Ok(deadline(
            conn.config.timeouts.rpc(),
            "reading block refs",
            conn.block_ref
                .get_range(hash, None, None, 10_000, EnumerationOrder::Forward),
        )
        .await?)
    }

    pub(super) async fn write_ref(
        &self,
        hash: Hash,
        version: Uuid,
        deleted: bool,
    ) -> Result<(), Error> {
        let r = BlockRef {
            block: hash,
            version,
            deleted: crdt::Bool::new(deleted),
        };
        Ok(self.conn().rpc_write_block_ref(r).await?)
    }

    /// Picks the generation whose ref will hold the block: the first whose
    /// anchor is alive and whose ref is live already (a put that crashed
    /// before its index write) or was never written.
    pub(super) async fn choose_generation(
        &self,
        cid: &Cid,
        hash: &Hash,
    ) -> Result<Placement, Error> {
        let refs = self.refs_of(hash).await?;
        for (g, anchor, existing) in anchor::generations(self.id, hash, &refs) {
            if existing.is_some_and(|r| r.deleted.get()) {
                continue; // a deleted ref can never be revived
            }
            // A live ref counts only under a live anchor: a ref under a dead
            // one would be dropped by the next `garage repair block-refs`.
            if self.store.anchors.ensure(self.conn(), anchor).await? {
                return Ok(Placement {
                    generation: g,
                    new_ref: existing.is_none(),
                    unknown: refs.is_empty(),
                });
            }
        }
        Err(Error::GenerationsExhausted(*cid))
    }

    /// Writes a block's ref and its copies. The ref goes first: a block
    /// whose last ref was deleted has copies pending collection (Garage
    /// deletes them 10 minutes later), and one could be collected between
    /// our block write and a later ref. A block the cluster holds no ref
    /// for at all, live or deleted, has no copy pending collection (a
    /// deleted ref is kept a day, far past the collection delay), so both
    /// are written at once and a put waits for one round trip less.
    pub(super) async fn write_ref_and_block(
        &self,
        cid: &Cid,
        hash: Hash,
        place: &Placement,
        data: Bytes,
    ) -> Result<(), Error> {
        let anchor = AnchorId::of(self.id, place.generation, &hash).version_uuid();
        // `unknown` implies `new_ref`: no ref at all means none is live.
        let (ref_written, block_written) = if place.unknown {
            tokio::join!(
                self.write_ref(hash, anchor, false),
                self.conn().rpc_put_block(hash, data)
            )
        } else {
            if place.new_ref {
                self.write_ref(hash, anchor, false).await?;
            }
            (Ok(()), self.conn().rpc_put_block(hash, data).await)
        };
        match (ref_written, block_written) {
            (Ok(()), Ok(())) => Ok(()),
            // Copies without a ref: Garage collects them.
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => {
                if place.new_ref {
                    // Best effort: with the quorum gone this fails too, and
                    // `verify` finds the ref without an index entry later.
                    if let Err(e2) = self.write_ref(hash, anchor, true).await {
                        tracing::warn!(cause = %e2, block = %cid, "could not retract the ref of a failed put");
                    }
                }
                Err(e.into())
            }
        }
    }

    async fn put_verified(&self, cid: &Cid, data: Bytes) -> Result<(), Error> {
        self.store.register(&self.name).await?;
        let mh = cid.hash();
        // A block the filter knows is absent has no live entry: write
        // blindly. (A tombstone left by a delete then becomes a sibling of
        // the new value, and a live value wins over a tombstone.)
        let small = data.len() <= INLINE_MAX;
        if small && self.confirm_packed(mh).await? {
            return Ok(()); // packed already
        }
        let known_absent = matches!(
            self.filter.as_ref().and_then(|f| f.peek(mh)),
            Some((false, _))
        );
        let (existing, context, settled) = if known_absent {
            (None, None, true)
        } else {
            self.entry_read(mh).await?
        };
        if let Some(existing) = existing {
            if !settled {
                // Perhaps on one node only (a put that missed its quorum):
                // written again, so that what we acknowledge is on a quorum.
                self.rpc_index_insert(mh, context, DvvsValue::Value(existing.encode()))
                    .await?;
            }
            if let Some(f) = &self.filter {
                f.note_present(mh);
            }
            return Ok(());
        }
        if small && self.store.packing.is_some() {
            return self.put_packed(cid, data).await;
        }
        if small {
            let entry = Entry::inline(cid.codec(), data);
            self.rpc_index_insert(mh, context, DvvsValue::Value(entry.encode()))
                .await?;
            self.note_stored(mh, &entry);
            return Ok(());
        }
        let hash = blake2sum(&data);
        let place = self.choose_generation(cid, &hash).await?;
        let size = data.len() as u32;
        self.write_ref_and_block(cid, hash, &place, data).await?;
        let entry = Entry {
            hash,
            size,
            generation: place.generation,
            codec: cid.codec(),
            inline: None,
            packed: None,
        };
        self.rpc_index_insert(mh, context, DvvsValue::Value(entry.encode()))
            .await?;
        self.note_stored(mh, &entry);
        Ok(())
    }

    /// An acknowledged put: into the filter and the cache.
    pub(super) fn note_stored(&self, mh: &Multihash<64>, entry: &Entry) {
        if let Some(f) = &self.filter {
            f.note_put(mh, entry.encode().len());
        }
        if let Some(epoch) = self.cache_epoch(mh) {
            self.store.cache.put_entry(self.id, mh, epoch, entry);
        }
    }

    async fn get_verified(&self, cid: &Cid) -> Result<Option<Bytes>, Error> {
        let mh = cid.hash();
        let Some(Found {
            entry,
            data,
            epoch,
            packed,
        }) = self.lookup(mh, true).await?
        else {
            return Ok(None);
        };
        let (entry, epoch) = if packed.is_empty() {
            (entry, epoch)
        } else {
            let unreadable = match self.read_packed(cid, &packed).await {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            // No pack held it under its CID (a map key shared with another
            // block), or none could be read: the per-block index decides.
            match (self.entry(mh).await?.0, unreadable) {
                (Some(e), _) => (e, None),
                (None, Some(e)) => return Err(e),
                (None, None) => return Ok(None),
            }
        };
        if let Some(data) = entry.inline {
            // Verified like any block: the index is storage too.
            cidutil::verify(cid, &data).map_err(|e| Error::Unreadable {
                cid: *cid,
                cause: format!("inline copy: {e}"),
            })?;
            return Ok(Some(data));
        }
        if let Some(data) = data {
            return Ok(Some(data));
        }
        let local = match self.conn().read_colocated(&entry.hash).await {
            Some(b) if cidutil::verify(cid, &b).is_ok() => Some(b),
            Some(_) => {
                tracing::warn!(%cid, "the co-located copy does not match its CID; reading from the cluster");
                None
            }
            None => None,
        };
        let bytes = match local {
            Some(b) => b,
            None => self
                .conn()
                .rpc_get_block(entry.hash, |b| cidutil::verify(cid, b).is_ok())
                .await
                .map_err(|e| Error::Unreadable {
                    cid: *cid,
                    cause: e.to_string(),
                })?,
        };
        if let Some(epoch) = epoch {
            self.store
                .cache
                .put_data(self.id, mh, epoch, &entry, &bytes);
        }
        Ok(Some(bytes))
    }

    /// Deletes a block; `confirm_absent`: before answering that it was not
    /// there, bring the pack map up to the counters and look again (a
    /// caller that does not use the answer, gc removing what it listed,
    /// skips that work).
    pub(super) async fn delete_entry(
        &self,
        cid: &Cid,
        confirm_absent: bool,
    ) -> Result<bool, Error> {
        self.delete_entry_with(cid, confirm_absent, true).await
    }

    /// [`Self::delete_entry`]; `sync`: bring the pack map up to the
    /// counters first (only tests skip it, to act as a lagging map).
    pub(super) async fn delete_entry_with(
        &self,
        cid: &Cid,
        confirm_absent: bool,
        sync: bool,
    ) -> Result<bool, Error> {
        // Removed from the cache before and again after the tombstone: the
        // second remove drops an entry that a concurrent lookup cached from
        // the index between the two.
        self.store.cache.remove(self.id, cid.hash());
        let mut packed = self.delete_packed(cid.hash(), sync).await?;
        let (entry, context) = self.entry(cid.hash()).await?;
        if confirm_absent && !packed && entry.is_none() {
            // "Not here" is not answered from the map alone: another
            // connector may have packed the block a moment ago. The map is
            // brought up to the counters (whatever our own writes explain)
            // and asked again.
            self.sync_packs_strictly().await?;
            packed = self.delete_packed(cid.hash(), true).await?;
        }
        // A copy in a pack this connector does not know (packed again by
        // one that did not know ours) dies by the marker (`gone.rs`). A
        // block of its own, too large for a pack, needs none.
        if entry.as_ref().is_none_or(|e| e.inline.is_some()) {
            self.write_marker(cid.hash()).await?;
        }
        let Some(entry) = entry else {
            return Ok(packed);
        };
        // Index first: an index entry must never outlive its block.
        self.tombstone_entry(cid.hash(), context, &entry).await?;
        if entry.inline.is_some() {
            return Ok(true);
        }
        self.delete_refs(&entry.hash).await?;
        Ok(true)
    }

    /// Replaces a block's index entry (`entry`, as read) by a tombstone
    /// (with the causal context of the read that found it), and forgets it
    /// here.
    pub(super) async fn tombstone_entry(
        &self,
        mh: &Multihash<64>,
        context: Option<CausalContext>,
        entry: &Entry,
    ) -> Result<(), Error> {
        self.rpc_index_insert(mh, context, DvvsValue::Deleted)
            .await?;
        self.store.cache.remove(self.id, mh);
        if let Some(f) = &self.filter {
            f.note_delete(mh, entry.encode().len());
        }
        Ok(())
    }

    /// Deletes this namespace's live refs of a block (Garage collects its
    /// copies once no namespace holds one).
    pub(super) async fn delete_refs(&self, hash: &Hash) -> Result<(), Error> {
        let refs = self.refs_of(hash).await?;
        for (_, anchor, r) in anchor::generations(self.id, hash, &refs) {
            if r.is_some_and(|r| !r.deleted.get()) {
                self.write_ref(*hash, anchor.version_uuid(), true).await?;
            }
        }
        Ok(())
    }

    /// Streams the live entries of the namespace, shard by shard, as
    /// (multihash, entry) pairs.
    pub fn list_entries(&self) -> BoxStream<'static, Result<(Multihash<64>, Entry), Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_PAGE);
        let ns = self.clone();
        tokio::spawn(Op::List.scope(async move {
            // Packed blocks first, each once; then index entries of blocks
            // not listed with them.
            let mut seen = std::collections::HashSet::new();
            {
                let mut packed = std::pin::pin!(ns.list_packed());
                while let Some(r) = futures::StreamExt::next(&mut packed).await {
                    match r {
                        Ok(manifests) => {
                            // A compaction's unfinished pack names only what
                            // its sources agree is live.
                            let mut listable = Vec::with_capacity(manifests.len());
                            for (hash, m) in manifests {
                                match ns.listable_slots(&hash, &m).await {
                                    Ok(only) => listable.push((hash, m, only)),
                                    Err(e) => {
                                        let _ = tx.send(Err(e)).await;
                                        return;
                                    }
                                }
                            }
                            for e in super::packed::packed_entries(listable, &mut seen) {
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
            for shard in 0..index::INDEX_SHARDS {
                if let Err(e) = ns.list_shard(shard, &seen, &tx).await {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        }));
        Box::pin(ReceiverStream::new(rx))
    }

    pub(super) async fn list_shard(
        &self,
        shard: usize,
        skip: &std::collections::HashSet<u64>,
        tx: &tokio::sync::mpsc::Sender<Result<(Multihash<64>, Entry), Error>>,
    ) -> Result<(), Error> {
        let partition = K2VItemPartition {
            bucket_id: self.id,
            partition_key: index::shard_name(shard),
        };
        let mut start: Option<String> = None;
        loop {
            let (page, next) = self.k2v_page(&partition, start.take(), LIST_PAGE).await?;
            for item in page {
                let bad = |reason: String| Error::BadIndexEntry {
                    key: item.sort_key.clone(),
                    reason,
                };
                let mh = cidutil::from_dskey(&item.sort_key).map_err(|e| bad(e.to_string()))?;
                let Some(entry) = index::live_entry(&item).map_err(|e| bad(e.to_string()))? else {
                    continue;
                };
                if skip.contains(&super::pack::map_key(&mh)) {
                    continue; // listed with its pack
                }
                if tx.send(Ok((mh, entry))).await.is_err() {
                    return Ok(());
                }
            }
            match next {
                Some(n) => start = Some(n),
                None => return Ok(()),
            }
        }
    }

    /// One page of a K2V partition of this namespace from `start`
    /// (inclusive), tombstones included, without the item that ended the
    /// previous page (`start` itself); and where the next page starts, or
    /// `None` after the last. A page read is idempotent, so it is retried
    /// after a dropped connection.
    pub(super) async fn k2v_page(
        &self,
        partition: &K2VItemPartition,
        start: Option<String>,
        limit: usize,
    ) -> Result<(Vec<K2VItem>, Option<String>), Error> {
        let page = retry_transient(|| async {
            Ok(self
                .conn()
                .rpc_k2v_range(partition, start.clone(), limit)
                .await?)
        })
        .await?;
        let next = (page.len() == limit).then(|| page.last().map(|i| i.sort_key.clone()));
        let items = page
            .into_iter()
            .filter(|i| start.as_deref() != Some(i.sort_key.as_str()))
            .collect();
        Ok((items, next.flatten()))
    }
}

impl Found {
    /// A block the pack map holds.
    fn packed(packed: Vec<Located>) -> Self {
        let first = packed[0];
        Self {
            entry: Entry {
                hash: first.pack,
                size: first.len,
                generation: 0,
                codec: 0,
                inline: None,
                packed: Some(super::InPack {
                    offset: first.offset,
                    storage: first.storage,
                }),
            },
            data: None,
            epoch: None,
            packed,
        }
    }
}

/// Where a block's ref goes ([`Namespace::choose_generation`]).
pub(super) struct Placement {
    /// The generation (anchor) the ref is under.
    pub generation: u16,
    /// The ref is still to be written (not live already).
    pub new_ref: bool,
    /// The cluster holds no ref for the block, live or deleted.
    pub unknown: bool,
}

/// Waits before each retry of an operation that failed on a transient
/// cluster error.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(150), Duration::from_millis(600)];

/// Runs an operation again after a retryable cluster failure
/// ([`crate::garage::Error::is_retryable`]: a quorum missed, a connection lost, a layout
/// not ready), as happens on the first requests after a storage node
/// restarted (our connection to it is dead until the next request
/// notices). Every step of our operations is idempotent (CRDT table
/// writes, content-addressed block writes), so a retry is safe. Nothing
/// else is retried: a timeout has used its deadline already, and a corrupt
/// block or a refused request would fail the same way again.
pub(super) async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut backoff = RETRY_BACKOFF.iter();
    loop {
        match op().await {
            Err(Error::Cluster(e)) if e.is_retryable() => match backoff.next() {
                Some(wait) => {
                    tracing::debug!(cause = %e, "transient cluster error; retrying");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(Error::Cluster(e)),
            },
            other => return other,
        }
    }
}

impl BlockStore for Namespace {
    #[tracing::instrument(skip_all, fields(ns = %self.name, cid = %cid))]
    async fn put(&self, cid: &Cid, data: Bytes) -> Result<(), Error> {
        cidutil::verify(cid, &data)?;
        if cidutil::is_identity(cid) {
            return Ok(());
        }
        // Bounded memory: a put holds its block's KiB in the budget.
        let kib = (data.len() / 1024 + 1).min(IN_FLIGHT_KIB) as u32;
        let _permit = self
            .store
            .in_flight
            .acquire_many(kib)
            .await
            .expect("never closed");
        Op::Put
            .scope(retry_transient(|| self.put_verified(cid, data.clone())))
            .await
    }

    #[tracing::instrument(skip_all, fields(ns = %self.name, cid = %cid))]
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, Error> {
        cidutil::check_supported(cid)?;
        if cidutil::is_identity(cid) {
            return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
        }
        Op::Get
            .scope(retry_transient(|| self.get_verified(cid)))
            .await
    }

    #[tracing::instrument(skip_all, fields(ns = %self.name, cid = %cid))]
    async fn has(&self, cid: &Cid) -> Result<bool, Error> {
        Ok(self.get_size(cid).await?.is_some())
    }

    #[tracing::instrument(skip_all, fields(ns = %self.name, cid = %cid))]
    async fn get_size(&self, cid: &Cid) -> Result<Option<u64>, Error> {
        cidutil::check_supported(cid)?;
        if cidutil::is_identity(cid) {
            return Ok(Some(cid.hash().size() as u64));
        }
        let entry = Op::Has
            .scope(retry_transient(|| async {
                Ok(self.lookup(cid.hash(), false).await?.map(|f| f.entry))
            }))
            .await?;
        Ok(entry.map(|e| e.size as u64))
    }

    #[tracing::instrument(skip_all, fields(ns = %self.name, cid = %cid))]
    async fn delete(&self, cid: &Cid) -> Result<bool, Error> {
        cidutil::check_supported(cid)?;
        if cidutil::is_identity(cid) {
            return Ok(false);
        }
        Op::Delete
            .scope(retry_transient(|| self.delete_entry(cid, true)))
            .await
    }

    fn list_sized(&self) -> BoxStream<'static, Result<(Multihash<64>, u64), Error>> {
        use futures::StreamExt;
        Box::pin(
            self.list_entries()
                .map(|r| r.map(|(mh, e)| (mh, u64::from(e.size)))),
        )
    }
}
