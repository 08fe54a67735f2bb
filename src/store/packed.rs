//! The store's packed small blocks: the pack writer, the pack map's upkeep,
//! and the reads, deletes and listings that use them. The formats and the
//! map itself are in `pack.rs`; docs/DESIGN.md ("Packing small blocks")
//! says why each rule is as it is.
//!
//! - **Writes.** Small puts of a namespace queue in a group-commit batcher
//!   (no timer: a lone put leaves at once). Each batch of at least
//!   [`PACK_MIN_BLOCKS`] becomes one pack: its bytes as one K2V row beside
//!   its manifest (or, with [`PackStorage::Blocks`], one Garage block under
//!   one anchored ref), then its manifest. The batch's puts are
//!   acknowledged when the manifest is on a write quorum, never before. A
//!   smaller batch is written as inline index entries instead.
//! - **The map** answers "where is this block" from memory. It is built
//!   from the filter's snapshot (the partitions whose counters did not move
//!   since it was saved) and by listing the other manifest partitions, then
//!   kept current from the K2V counters of those partitions: a filtered
//!   store polls them with its index counters every second; a store
//!   without filters reads them again when a lookup misses.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use cid::Cid;
use futures::{StreamExt, TryStreamExt};
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::{blake2sum, Hash};
use multihash::Multihash;

use super::filter::OwnWrites;
use super::gone::Markers;
use super::index::{Entry, InPack, INLINE_MAX};
use super::pack::{
    self, Located, Manifest, PackBuilder, PackMap, PackStorage, PACK_MAX_BYTES, PACK_MAX_SLOTS,
};
use super::snapshot::SavedPartition;
use super::{Error, GarageStore, Namespace};
use crate::cid as cidutil;
use crate::garage::batch::{BatchLimits, Batcher};

/// Manifest partitions per namespace.
pub(crate) const PACK_PARTITIONS: usize = 256;

/// Pack writes in flight per namespace. Few, so that puts arriving while
/// packs are written wait for the next one and packs are large: a pack's
/// cost (two rows; or three block copies, a ref and a manifest) is nearly
/// the same for one block as for a hundred.
const PACKS_IN_FLIGHT: usize = 2;

/// Batches of fewer blocks are written inline (one index entry each, in
/// one request) instead of as a pack: below this, a pack costs more than
/// the entries it saves.
pub(super) const PACK_MIN_BLOCKS: usize = 4;

/// How the batch holding a small put was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// In a pack.
    Packed,
    /// As an inline index entry of its own.
    Inline,
}

/// Retired packs followed in a row to the one holding their blocks (each
/// compaction of a compacted pack adds one until the grace period ends).
const MAX_RETIREMENTS: usize = 8;

/// Manifests fetched per listing request (each is up to ~25 KiB).
const LIST_PAGE: usize = 100;

/// Items read per request when a namespace's manifest partitions are
/// purged (rows are up to 64 KiB each).
const PURGE_PAGE: usize = 16;

/// Partitions listed at once when the whole map is built.
const LIST_CONCURRENCY: usize = 16;

/// One small block waiting for its pack.
pub(super) struct PackItem {
    mh: Multihash<64>,
    codec: u64,
    data: Bytes,
}

/// A change of ours to the map, replayed after a listing that may have
/// started before it.
pub(crate) enum Change {
    Insert(Hash, Manifest),
    /// A block deleted from these packs (only: a listing replayed after
    /// may hold a copy written since, in another pack, which lives).
    Delete(Multihash<64>, Vec<Hash>),
}

impl Change {
    fn apply(&self, map: &mut PackMap) {
        match self {
            Change::Insert(hash, m) => map.insert(*hash, m),
            Change::Delete(mh, packs) => {
                map.delete_in(mh, Some(packs));
            }
        }
    }
}

/// What a read of a pack's row found.
pub(super) enum PackRow {
    /// Bytes that hash to the pack's name.
    Good(Bytes),
    /// No row, or only its tombstone.
    Missing,
    /// Only bytes that do not.
    Wrong,
}

impl PackRow {
    /// The bytes, or why there are none.
    pub(super) fn bytes(self) -> Result<Bytes, &'static str> {
        match self {
            PackRow::Good(b) => Ok(b),
            PackRow::Missing => Err("its pack's row is on no node read"),
            PackRow::Wrong => Err("its pack's row does not match the pack's hash"),
        }
    }
}

/// A manifest as a quorum read found it, with what rewriting it needs.
pub(super) struct ManifestRead {
    pub(super) partition: K2VItemPartition,
    pub(super) key: String,
    pub(super) item: garage_model::k2v::item_table::K2VItem,
    pub(super) manifest: Manifest,
    /// Whether every node read agreed (else it is worth writing back).
    pub(super) settled: bool,
}

/// What the counters say of one manifest partition.
#[derive(Debug, Clone)]
pub(crate) struct PackCounted {
    /// Every counter value, serialized, to spot any change.
    pub(crate) signature: Vec<u8>,
    /// Manifests and packs' rows.
    pub(crate) entries: i64,
    /// Bytes of their values (a delete adds two to a manifest's).
    pub(crate) bytes: i64,
}

/// Which manifest partitions a relisting takes.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// Those whose counters moved beyond what our own writes explain.
    Moved,
    /// Those whose counters differ from the ones they were listed under.
    Changed,
    /// Every one.
    All,
}

#[derive(Default)]
struct Partition {
    /// Counters seen when it was last listed (`None`: it had none).
    seen: Option<PackCounted>,
    /// Our changes while it is being listed.
    pending: Option<Vec<Change>>,
    /// Our own writes since it was listed, by counter: a change of the
    /// counters they explain needs no listing (the filter's rule, see
    /// `filter.rs`), so that our own packs cost us no listing.
    our_entries: OwnWrites,
    our_bytes: OwnWrites,
    /// A write of ours to it failed since it was listed: it may or may not
    /// have reached a node, so what it did to the counters is unknown and
    /// our writes explain nothing until the partition is listed again.
    /// (Counting it as done let a failed write stand for another
    /// connector's pack of the same size: the nemesis checker saw a daemon
    /// miss such a pack for tens of seconds.)
    uncertain: bool,
    /// Its last listing found fewer items than the counters it was listed
    /// under count (a pack counted on one node, not yet on a quorum: the
    /// filter's `short`); listed again at the next change of its counters.
    short: bool,
}

impl Partition {
    /// Whether the partition must be listed again, given its counters now.
    fn moved(&self, now: Option<&PackCounted>) -> bool {
        if self.uncertain {
            return true;
        }
        let (entries, bytes) = match (&self.seen, now) {
            (None, None) => return false,
            (Some(seen), Some(now)) if seen.signature == now.signature => return false,
            _ if self.short => return true,
            (Some(seen), Some(now)) => (now.entries - seen.entries, now.bytes - seen.bytes),
            (None, Some(now)) => (now.entries, now.bytes),
            (Some(_), None) => return true,
        };
        !(self.our_entries.explain(entries) && self.our_bytes.explain(bytes))
    }
}

/// Counters of the pack map, for `status` and the benchmark.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PackStats {
    /// Live packed blocks the map knows.
    pub blocks: u64,
    /// Bytes the map uses, about.
    pub memory_bytes: u64,
    /// Packs this process wrote.
    pub packs_written: u64,
    /// Batches of small blocks too few for a pack, written inline instead.
    pub inline_batches: u64,
    /// Blocks in those batches.
    pub inline_blocks: u64,
    /// Manifest partitions listed.
    pub partitions_listed: u64,
    /// Manifest partitions restored from the snapshot at start.
    pub partitions_restored: u64,
    /// Whether the map was built.
    pub built: bool,
    /// Delete markers this process knows (`gone.rs`).
    pub markers: u64,
    /// Packed copies older than their block's delete marker that this
    /// process deleted.
    pub copies_killed: u64,
}

/// The packs of one namespace, as this process knows them.
pub(crate) struct NsPacks {
    map: RwLock<PackMap>,
    parts: Mutex<Vec<Partition>>,
    built: AtomicBool,
    /// One listing at a time.
    syncing: tokio::sync::Mutex<()>,
    writer: Batcher<PackItem, Written>,
    written: AtomicU64,
    inline_batches: AtomicU64,
    inline_blocks: AtomicU64,
    listed: AtomicU64,
    restored: AtomicU64,
    /// The snapshot's partitions, until the map is built: whoever builds
    /// it first (the filter's start, or an early request) restores them.
    snapshot: Mutex<Vec<SavedPartition>>,
    /// The delete markers known, and the copies they may have killed
    /// (`gone.rs`). Locked before the map when both are.
    pub(super) markers: Mutex<Markers>,
    /// A step of [`Namespace::follow_markers`] runs.
    pub(super) following_markers: AtomicBool,
}

impl NsPacks {
    pub(super) fn new(store: Weak<GarageStore>, name: String) -> Arc<Self> {
        let limits = BatchLimits {
            max_items: PACK_MAX_SLOTS,
            // The batcher stops adding once it is at or past this, so a
            // pack ends at most one small block beyond it.
            max_bytes: PACK_MAX_BYTES - INLINE_MAX - 64,
            in_flight: PACKS_IN_FLIGHT,
            queue: 4 * PACK_MAX_SLOTS,
        };
        let writer = Batcher::spawn(limits, move |items: Vec<PackItem>| {
            let ns = store
                .upgrade()
                .and_then(|s| s.namespace_unfiltered(&name).ok());
            async move {
                let Some(ns) = ns else {
                    return Err(crate::garage::Error::Internal(
                        "the store was dropped".into(),
                    ));
                };
                ns.write_pack(items).await.map_err(|e| match e {
                    Error::Cluster(e) => e,
                    other => crate::garage::Error::Internal(other.to_string()),
                })
            }
        });
        Arc::new(Self {
            map: Default::default(),
            parts: Mutex::new((0..PACK_PARTITIONS).map(|_| Partition::default()).collect()),
            built: AtomicBool::new(false),
            syncing: Default::default(),
            writer,
            written: AtomicU64::new(0),
            inline_batches: AtomicU64::new(0),
            inline_blocks: AtomicU64::new(0),
            listed: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            snapshot: Default::default(),
            markers: Default::default(),
            following_markers: AtomicBool::new(false),
        })
    }

    /// Whether the map was built (until then it knows only our packs).
    pub(super) fn is_built(&self) -> bool {
        self.built.load(Ordering::Acquire)
    }

    /// Where the map has a block: every live location of its key.
    pub(super) fn locate(&self, mh: &Multihash<64>) -> Vec<Located> {
        self.map.read().unwrap().lookup(mh)
    }

    pub(super) fn stats(&self) -> PackStats {
        let (markers, copies_killed) = self.markers.lock().unwrap().counts();
        let map = self.map.read().unwrap();
        PackStats {
            markers,
            copies_killed,
            blocks: map.len() as u64,
            memory_bytes: map.memory_bytes() as u64,
            packs_written: self.written.load(Ordering::Relaxed),
            inline_batches: self.inline_batches.load(Ordering::Relaxed),
            inline_blocks: self.inline_blocks.load(Ordering::Relaxed),
            partitions_listed: self.listed.load(Ordering::Relaxed),
            partitions_restored: self.restored.load(Ordering::Relaxed),
            built: self.is_built(),
        }
    }

    pub(super) fn note_removed(&self, hash: &Hash) {
        self.map.write().unwrap().remove(hash);
    }

    /// One of our writes changed a partition's counters by so many
    /// manifests and bytes.
    fn note_counted(&self, partition: usize, entries: i64, bytes: i64) {
        let mut parts = self.parts.lock().unwrap();
        let p = &mut parts[partition];
        p.our_entries.note(entries);
        p.our_bytes.note(bytes);
    }

    /// Counts a write of ours to `partition` that was acknowledged, or,
    /// when it failed, marks the partition to be listed again (its effect
    /// on the counters is unknown).
    fn note_write<T, E>(&self, partition: usize, entries: i64, bytes: i64, result: &Result<T, E>) {
        match result {
            Ok(_) => self.note_counted(partition, entries, bytes),
            Err(_) => self.parts.lock().unwrap()[partition].uncertain = true,
        }
    }

    pub(super) fn note(&self, partition: Option<usize>, change: Change) {
        let mut map = self.map.write().unwrap();
        let mut parts = self.parts.lock().unwrap();
        change.apply(&mut map);
        // A listing in progress may miss it: replay it after.
        match (partition, change) {
            (Some(p), change) => {
                if let Some(pending) = &mut parts[p].pending {
                    pending.push(change);
                }
            }
            (None, Change::Delete(mh, packs)) => {
                let mut ps: Vec<usize> = packs.iter().map(|h| h.as_slice()[0] as usize).collect();
                ps.sort_unstable();
                ps.dedup();
                for p in ps {
                    if let Some(pending) = &mut parts[p].pending {
                        pending.push(Change::Delete(mh, packs.clone()));
                    }
                }
            }
            (None, Change::Insert(..)) => unreachable!("inserts name their partition"),
        }
    }

    /// Lists one manifest partition and replaces what the map had of it.
    async fn relist(
        &self,
        ns: &Namespace,
        p: usize,
        seen: Option<&PackCounted>,
    ) -> Result<(), Error> {
        {
            let mut parts = self.parts.lock().unwrap();
            let part = &mut parts[p];
            part.pending = Some(Vec::new());
            // Ours from now on are in the listing or in `pending`.
            part.our_entries = OwnWrites::default();
            part.our_bytes = OwnWrites::default();
            part.uncertain = false;
        }
        let listed = match ns.list_manifests(p).await {
            Ok(l) => l,
            Err(e) => {
                self.parts.lock().unwrap()[p].pending = None;
                return Err(e);
            }
        };
        self.listed.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.write().unwrap();
        let mut parts = self.parts.lock().unwrap();
        let now: HashSet<Hash> = listed.iter().map(|(h, _)| *h).collect();
        for h in map.packs_in(p) {
            if !now.contains(&h) {
                map.remove(&h);
            }
        }
        for (h, m) in &listed {
            map.insert(*h, m);
        }
        for change in parts[p].pending.take().unwrap_or_default() {
            change.apply(&mut map);
        }
        parts[p].seen = seen.cloned();
        // Items the counters count: a pack in a row is its row and its
        // manifest; one in a Garage block, its manifest.
        let items: i64 = listed
            .iter()
            .map(|(_, m)| match m.storage {
                PackStorage::Rows => 2,
                PackStorage::Blocks => 1,
            })
            .sum();
        parts[p].short = seen.is_some_and(|c| c.entries > items);
        drop((map, parts));
        // A pack may be learned after a marker of one of its blocks.
        let mut markers = self.markers.lock().unwrap();
        for (h, m) in &listed {
            markers.check_listed(*h, m.live().map(|(_, s)| &s.mh));
        }
        Ok(())
    }

    /// Builds the map: the partitions of a snapshot whose counters have not
    /// moved since it was saved are restored from it, and every other
    /// manifest partition is listed (not only those the counters show,
    /// which may lag a pack acknowledged a moment ago).
    pub(super) async fn build(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Result<(), Error> {
        let _one = self.syncing.lock().await;
        if self.is_built() {
            return Ok(());
        }
        let saved = std::mem::take(&mut *self.snapshot.lock().unwrap());
        let restored = self.restore(saved, counters);
        let mut listings = futures::stream::iter(0..PACK_PARTITIONS)
            .filter(|p| std::future::ready(!restored[*p]))
            .map(|p| self.relist(ns, p, counters.get(&p)))
            .buffer_unordered(LIST_CONCURRENCY);
        while let Some(r) = listings.next().await {
            r?;
        }
        self.built.store(true, Ordering::Release);
        Ok(())
    }

    /// Keeps a snapshot's partitions for the build of the map (ignored if
    /// it is built already).
    pub(super) fn offer_snapshot(&self, saved: Vec<SavedPartition>) {
        if !self.is_built() {
            *self.snapshot.lock().unwrap() = saved;
        }
    }

    /// Puts the partitions of a snapshot into the map, those whose
    /// counters are still the ones they were saved with. Returns which.
    fn restore(
        &self,
        saved: Vec<SavedPartition>,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Vec<bool> {
        let mut restored = vec![false; PACK_PARTITIONS];
        let mut map = self.map.write().unwrap();
        let mut parts = self.parts.lock().unwrap();
        for s in saved {
            let p = usize::from(s.partition);
            if p >= PACK_PARTITIONS || restored[p] {
                continue;
            }
            if s.seen.as_ref() != counters.get(&p).map(|c| &c.signature) {
                continue;
            }
            if !map.insert_saved(p, &s.packs) {
                continue;
            }
            parts[p].seen = s.seen.map(|signature| PackCounted {
                signature,
                entries: s.seen_entries,
                bytes: s.seen_bytes,
            });
            restored[p] = true;
        }
        self.restored.store(
            restored.iter().filter(|r| **r).count() as u64,
            Ordering::Relaxed,
        );
        restored
    }

    /// The partitions worth saving, given the counters of the last poll
    /// (the filter's rule, `filter.rs`): one whose packs are known to be
    /// exactly what some counters say, with those counters. A partition
    /// with our own writes since it was listed qualifies once they are all
    /// old enough to be counted and explain the counters' change.
    pub(super) fn saved_partitions(
        &self,
        now: &BTreeMap<usize, PackCounted>,
    ) -> Vec<SavedPartition> {
        if !self.is_built() {
            return Vec::new();
        }
        // Both locks at once, map first (the order `relist` takes them): a
        // listing finishing in between would otherwise pair the packs from
        // before it with the counters after it.
        let map = self.map.read().unwrap();
        let parts = self.parts.lock().unwrap();
        let mut packs = map.saved();
        (0..PACK_PARTITIONS)
            .filter_map(|p| {
                let part = &parts[p];
                if part.pending.is_some() || part.uncertain {
                    return None;
                }
                let seen = if part.our_entries.is_empty() && part.our_bytes.is_empty() {
                    part.seen.clone()
                } else if part.our_entries.all_counted()
                    && part.our_bytes.all_counted()
                    && !part.moved(now.get(&p))
                {
                    now.get(&p).cloned()
                } else {
                    return None;
                };
                let packs = packs[p].take()?;
                Some(SavedPartition {
                    partition: p as u16,
                    seen_entries: seen.as_ref().map_or(0, |s| s.entries),
                    seen_bytes: seen.as_ref().map_or(0, |s| s.bytes),
                    seen: seen.map(|s| s.signature),
                    packs,
                })
            })
            .collect()
    }

    /// Lists again the partitions whose counters moved since they were
    /// listed, beyond what our own writes explain (once built; builds
    /// otherwise).
    pub(super) async fn follow(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Result<(), Error> {
        self.relist_which(ns, counters, Which::Moved).await
    }

    /// Lists again every partition whose counters differ from those it was
    /// listed under, whether or not our own writes would explain the
    /// change: for answers that must not rest on the map alone (a delete
    /// that found nothing). A pack acknowledged less than Garage's counter
    /// propagation ago may still be missed (docs/NEMESIS.md states the
    /// bound the nemesis checker holds it to).
    pub(super) async fn follow_strictly(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Result<(), Error> {
        self.relist_which(ns, counters, Which::Changed).await
    }

    /// Lists every manifest partition again: the map then holds every pack
    /// acknowledged before this began.
    pub(super) async fn relist_all(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Result<(), Error> {
        self.relist_which(ns, counters, Which::All).await
    }

    /// Lists again the partitions `which` picks (once built; builds
    /// otherwise, which lists them all).
    async fn relist_which(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
        which: Which,
    ) -> Result<(), Error> {
        if !self.is_built() {
            return self.build(ns, counters).await;
        }
        self.relist_chosen(ns, counters, |parts| {
            (0..PACK_PARTITIONS)
                .filter(|p| {
                    let (part, now) = (&parts[*p], counters.get(p));
                    match which {
                        Which::Moved => part.moved(now),
                        Which::Changed => match (&part.seen, now) {
                            (None, None) => false,
                            (Some(seen), Some(now)) => seen.signature != now.signature,
                            _ => true,
                        },
                        Which::All => true,
                    }
                })
                .collect()
        })
        .await
    }

    /// Lists again the `n` partitions of a rolling refresh starting at
    /// `from` (catches changes the counters cannot show).
    pub(super) async fn refresh_some(
        &self,
        ns: &Namespace,
        from: usize,
        n: usize,
        counters: &BTreeMap<usize, PackCounted>,
    ) -> Result<(), Error> {
        if !self.is_built() {
            return Ok(());
        }
        self.relist_chosen(ns, counters, |_| {
            (from..from + n).map(|p| p % PACK_PARTITIONS).collect()
        })
        .await
    }

    /// Lists again the partitions `choose` picks, once no other listing
    /// runs (it sees the partitions' state as that listing left it).
    async fn relist_chosen(
        &self,
        ns: &Namespace,
        counters: &BTreeMap<usize, PackCounted>,
        choose: impl FnOnce(&[Partition]) -> Vec<usize>,
    ) -> Result<(), Error> {
        let _one = self.syncing.lock().await;
        let chosen = choose(&self.parts.lock().unwrap());
        // One partition that cannot be listed does not stop the others
        // from being followed; the first error is returned (the poller
        // then stops answering from memory until a poll completes).
        let mut first_error = None;
        for p in chosen {
            if let Err(e) = self.relist(ns, p, counters.get(&p)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The packs the map says hold a block, each once.
    pub(super) fn packs_holding(&self, mh: &Multihash<64>) -> Vec<Hash> {
        let mut packs: Vec<Hash> = self.locate(mh).into_iter().map(|l| l.pack).collect();
        packs.sort_unstable();
        packs.dedup();
        packs
    }
}

/// Bytes of an item's values, as Garage's `bytes` counter counts them.
pub(super) fn value_bytes(item: &garage_model::k2v::item_table::K2VItem) -> i64 {
    item.values()
        .iter()
        .map(|v| match v {
            DvvsValue::Value(b) => b.len() as i64,
            DvvsValue::Deleted => 0,
        })
        .sum()
}

/// A pack's hash as a CID (raw, BLAKE2b-256), to name it in errors and in
/// the block layer.
pub(super) fn pack_name(hash: &Hash) -> Cid {
    cidutil::raw_cid(Multihash::wrap(0xb220, hash.as_slice()).expect("32 bytes"))
}

/// The manifest partition a counter entry's sort key names, if any.
pub(crate) fn partition_of_counter(sort_key: &str) -> Option<usize> {
    pack::parse_partition(sort_key)
}

impl Namespace {
    /// Queues a small block for the next pack of this namespace and waits
    /// until that pack (or, in a small batch, its inline entry) is
    /// acknowledged.
    pub(super) async fn put_packed(&self, cid: &Cid, data: Bytes) -> Result<(), Error> {
        let len = data.len();
        let item = PackItem {
            mh: *cid.hash(),
            codec: cid.codec(),
            data: data.clone(),
        };
        if self.packs.writer.submit(item, len).await? == Written::Inline {
            self.note_stored(cid.hash(), &Entry::inline(cid.codec(), data));
        }
        Ok(())
    }

    /// Writes one batch of small blocks: a pack (its row, or its block and
    /// ref, then its manifest, each on a write quorum before the next: a
    /// manifest never names bytes that are not stored; the map learns it
    /// once the manifest is on a write quorum), or inline entries if the
    /// batch is too small for a pack.
    async fn write_pack(&self, mut items: Vec<PackItem>) -> Result<Written, Error> {
        let mut seen = HashSet::new();
        items.retain(|it| seen.insert(it.mh)); // the same block twice in one batch
        if items.len() < PACK_MIN_BLOCKS {
            // Written blindly: the put found no live entry, and a value
            // wins over a tombstone left by a delete.
            let writes = items.into_iter().map(|it| {
                let entry = Entry::inline(it.codec, it.data);
                async move {
                    self.rpc_index_insert(&it.mh, None, DvvsValue::Value(entry.encode()))
                        .await
                }
            });
            let n = writes.len() as u64;
            futures::future::try_join_all(writes).await?;
            self.packs.inline_batches.fetch_add(1, Ordering::Relaxed);
            self.packs.inline_blocks.fetch_add(n, Ordering::Relaxed);
            return Ok(Written::Inline);
        }
        let mut b = PackBuilder::unique();
        for it in &items {
            if !b.fits(it.data.len()) {
                return Err(Error::Cluster(crate::garage::Error::Internal(format!(
                    "a batch of {} blocks overflows a pack",
                    items.len()
                ))));
            }
            b.push(it.mh, it.codec, &it.data);
        }
        self.store_pack(b, self.store.packing.unwrap_or_default())
            .await?;
        Ok(Written::Packed)
    }

    /// Stores a new pack: its row (or its block and ref), then its
    /// manifest, each on a write quorum before the next, so that a
    /// manifest never names bytes that are not stored; then the map and
    /// the cache learn it. Returns its hash and manifest.
    pub(super) async fn store_pack(
        &self,
        b: PackBuilder,
        storage: PackStorage,
    ) -> Result<(Hash, Manifest), Error> {
        let (data, hash, manifest) = b.finish(storage);
        let p = hash.as_slice()[0] as usize;
        match storage {
            PackStorage::Rows => {
                self.insert_new(p, &hash, pack::row_key(&hash), data.to_vec())
                    .await?
            }
            PackStorage::Blocks => {
                let name = pack_name(&hash);
                // The nonce makes the pack's hash new to the cluster: no ref
                // can exist, live or deleted, so none is read.
                let place = self.new_block_placement(&name, &hash).await?;
                self.write_ref_and_block(&name, hash, &place, data.clone())
                    .await?;
            }
        }
        self.insert_new(p, &hash, pack::sort_key(&hash), manifest.encode())
            .await?;
        self.packs.written.fetch_add(1, Ordering::Relaxed);
        self.store.cache.put_pack(&hash, &data);
        self.packs
            .note(Some(p), Change::Insert(hash, manifest.clone()));
        Ok((hash, manifest))
    }

    /// Whether a pack the map names holds the block live, as a quorum
    /// read of its manifest says: a put acknowledged because the block is
    /// packed already must not rely on the map alone, which learns of
    /// other connectors' deletes only at its next poll. A manifest read
    /// from fewer nodes than a quorum is written back first.
    pub(super) async fn confirm_packed(&self, mh: &Multihash<64>) -> Result<bool, Error> {
        let packs = self.packs.packs_holding(mh);
        if packs.is_empty() {
            return Ok(false);
        }
        // A copy older than the block's delete marker is dead, whatever
        // its manifest says (`gone.rs`).
        // Read beside the first manifest: no round trip added.
        let (marker, first) =
            futures::future::join(self.read_marker(mh), self.read_current(&packs[0])).await;
        let marker = marker?;
        let mut first = Some(first?);
        let mut stale = Vec::new();
        for hash in packs {
            let current = match first.take() {
                Some(read) => read,
                None => self.read_current(&hash).await?,
            };
            let Some((at, read)) = current else {
                continue;
            };
            let m = &read.manifest;
            if m.live().all(|(_, s)| s.mh != *mh) {
                if m.slots.iter().any(|s| s.mh == *mh) {
                    stale.extend([hash, at]);
                }
                continue;
            }
            if !m.sources.is_empty() && !self.live_in_sources(&at, m, mh).await? {
                continue;
            }
            if let Some(t) = marker {
                if self.written_before(&at, &read.item, m.storage, t).await? {
                    continue;
                }
            }
            if !read.settled {
                self.conn()
                    .rpc_k2v_insert(
                        read.partition,
                        read.key,
                        Some(read.item.causal_context()),
                        DvvsValue::Value(m.encode()),
                    )
                    .await?;
            }
            return Ok(true);
        }
        // Deleted meanwhile: what the map said is stale.
        if !stale.is_empty() {
            self.packs.note(None, Change::Delete(*mh, stale));
        }
        Ok(false)
    }

    /// Whether a block live in `pack`, a compaction's new pack whose
    /// sources are not all retired, is live: until a source is retired by
    /// `pack`, a delete may have reached only the source (through a map
    /// that did not know `pack`), and the compaction will carry it. So a
    /// put is not acknowledged on such a copy unless its source agrees.
    async fn live_in_sources(
        &self,
        pack: &Hash,
        m: &Manifest,
        mh: &Multihash<64>,
    ) -> Result<bool, Error> {
        let agreed = self.listable_slots(pack, m).await?.unwrap_or_default();
        Ok(m.live().any(|(j, s)| s.mh == *mh && agreed.contains(&j)))
    }

    /// The slots of a compaction's unfinished new pack that a listing may
    /// name: those whose source agrees (the rule of [`Self::live_in_sources`]:
    /// a delete may have reached only the source). `None` for a pack that
    /// is not pending.
    pub(super) async fn listable_slots(
        &self,
        pack: &Hash,
        m: &Manifest,
    ) -> Result<Option<HashSet<usize>>, Error> {
        if m.sources.is_empty() {
            return Ok(None);
        }
        let mut live = HashSet::new();
        for (source, pairs) in m.source_slots() {
            let Some(read) = self.read_manifest(&source).await? else {
                continue; // removed: every block of it was deleted
            };
            if read.manifest.retired.is_some_and(|r| r.by != *pack) {
                continue;
            }
            live.extend(
                pairs
                    .into_iter()
                    .filter(|(i, _)| !read.manifest.is_deleted(*i))
                    .map(|(_, j)| j),
            );
        }
        Ok(Some(live))
    }

    /// A pack's manifest, read from a quorum (`None`: there is none, or
    /// only its tombstone).
    pub(super) async fn read_manifest(&self, hash: &Hash) -> Result<Option<ManifestRead>, Error> {
        let partition = pack::partition(self.id(), hash);
        let key = pack::sort_key(hash);
        let read = self.conn().rpc_k2v_get(&partition, &key).await?;
        let Some(item) = read.value else {
            return Ok(None);
        };
        let manifest = Manifest::of_item(&item).map_err(|e| Error::BadIndexEntry {
            key: format!("{}/{key}", partition.partition_key),
            reason: e.to_string(),
        })?;
        Ok(manifest.map(|manifest| ManifestRead {
            partition,
            key,
            item,
            manifest,
            settled: read.settled,
        }))
    }

    /// A pack's manifest read from a quorum, following retirements to the
    /// pack that holds its live blocks now; the map forgets each retired
    /// pack met and learns the successor. `None`: a manifest on the way is
    /// missing (the pack was removed).
    pub(super) async fn read_current(
        &self,
        hash: &Hash,
    ) -> Result<Option<(Hash, ManifestRead)>, Error> {
        let mut at = *hash;
        for _ in 0..MAX_RETIREMENTS {
            let Some(read) = self.read_manifest(&at).await? else {
                return Ok(None);
            };
            let next = read.manifest.retired.map(|r| r.by);
            if next.is_some() || at != *hash {
                let p = at.as_slice()[0] as usize;
                self.packs
                    .note(Some(p), Change::Insert(at, read.manifest.clone()));
            }
            match next {
                Some(by) => at = by,
                None => return Ok(Some((at, read))),
            }
        }
        Err(Error::BadIndexEntry {
            key: format!(
                "{}/{}",
                pack::partition(self.id(), hash).partition_key,
                pack::sort_key(hash)
            ),
            reason: format!("more than {MAX_RETIREMENTS} retirements in a row"),
        })
    }

    /// The live manifests of one partition, by pack hash (retired ones
    /// included: the map skips them).
    pub(super) async fn list_manifests(&self, p: usize) -> Result<Vec<(Hash, Manifest)>, Error> {
        Ok(self
            .list_manifests_timed(p)
            .await?
            .into_iter()
            .map(|(h, m, _)| (h, m))
            .collect())
    }

    /// [`Self::list_manifests`], with each manifest's last write time on
    /// the cluster's clock ([`super::compact::item_time`]).
    pub(super) async fn list_manifests_timed(
        &self,
        p: usize,
    ) -> Result<Vec<(Hash, Manifest, u64)>, Error> {
        let mut out = Vec::new();
        // From the first manifest key: the packs' rows sort before.
        let from = Some(pack::MANIFESTS_FROM.to_string());
        let mut pages = std::pin::pin!(self.partition_pages(p, from, LIST_PAGE));
        while let Some(page) = pages.try_next().await? {
            for item in page {
                let bad = |reason: String| Error::BadIndexEntry {
                    key: format!("{}/{}", pack::partition_name(p), item.sort_key),
                    reason,
                };
                let hash = pack::parse_sort_key(&item.sort_key)
                    .ok_or_else(|| bad("not a pack hash".into()))?;
                if let Some(m) = Manifest::of_item(&item).map_err(|e| bad(e.to_string()))? {
                    out.push((hash, m, super::compact::item_time(&item)));
                }
            }
        }
        Ok(out)
    }

    /// The items of manifest partition `p` from sort key `from` on (`None`:
    /// all of them, the packs' rows first), page by page.
    pub(super) fn partition_pages(
        &self,
        p: usize,
        from: Option<String>,
        page: usize,
    ) -> impl futures::Stream<Item = Result<Vec<K2VItem>, Error>> + '_ {
        let partition = K2VItemPartition {
            bucket_id: self.id(),
            partition_key: pack::partition_name(p),
        };
        // `None` once the last page was read.
        futures::stream::try_unfold(Some(from), move |start| {
            let partition = partition.clone();
            async move {
                let Some(start) = start else {
                    return Ok(None);
                };
                let (items, next) = self.k2v_page(&partition, start, page).await?;
                Ok(Some((items, next.map(Some))))
            }
        })
    }

    /// Makes the map fit to answer for this connector: a filtered store's
    /// poller keeps it current; otherwise it is built on first need and
    /// follows the counters on each miss. That costs an unfiltered
    /// connector one counter read (one K2V range read) per miss and per
    /// delete: nothing for a CLI command, but a long-lived library user
    /// with many absent lookups should run with the filter on (the
    /// default), which answers those from memory.
    pub(super) async fn sync_packs(&self) -> Result<(), Error> {
        if self.filter.as_ref().is_some_and(|f| f.answers()) {
            return Ok(());
        }
        let counters = super::filter::pack_counters(self).await?;
        self.packs.follow(self, &counters).await
    }

    /// Brings the map up to the cluster's counters whatever our own writes
    /// explain, filter or not: before a delete answers that a block was
    /// not there.
    pub(super) async fn sync_packs_strictly(&self) -> Result<(), Error> {
        let counters = super::filter::pack_counters(self).await?;
        self.packs.follow_strictly(self, &counters).await
    }

    /// Lists every manifest partition again (see [`PackMap::relist_all`]):
    /// gc does before it trusts a block's absence, which would cost the
    /// block's descendants.
    pub(super) async fn relist_packs(&self) -> Result<(), Error> {
        let counters = super::filter::pack_counters(self).await?;
        self.packs.relist_all(self, &counters).await
    }

    /// A packed block's bytes from one of its locations, checked against
    /// the CID; `Ok(None)` if none holds it (a map key shared with another
    /// block); an error if a pack could not be read at all.
    pub(super) async fn read_packed(
        &self,
        cid: &Cid,
        locations: &[Located],
    ) -> Result<Option<Bytes>, Error> {
        let mut failed = None;
        for loc in locations {
            let pack = match self.pack_bytes(&loc.pack, loc.storage).await {
                Ok(p) => p,
                Err(e) => {
                    // A map older than a compaction's grace period names a
                    // pack removed since: its successor may hold the block.
                    match self.read_successor(cid, &loc.pack).await {
                        Ok(Some(b)) => return Ok(Some(b)),
                        Ok(None) => failed = Some(e),
                        Err(e) => failed = Some(e),
                    }
                    continue;
                }
            };
            let (from, to) = (loc.offset as usize, loc.offset as usize + loc.len as usize);
            if let Some(slot) = pack.get(from..to) {
                if cidutil::verify(cid, slot).is_ok() {
                    return Ok(Some(pack.slice(from..to)));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// A block from the pack that replaced `pack`, if `pack` was retired
    /// (its manifest read from a quorum, retirements followed).
    async fn read_successor(&self, cid: &Cid, pack: &Hash) -> Result<Option<Bytes>, Error> {
        let Some((at, read)) = self.read_current(pack).await? else {
            return Ok(None);
        };
        if at == *pack {
            return Ok(None);
        }
        let m = &read.manifest;
        for (_, s) in m.live().filter(|(_, s)| s.mh == *cid.hash()) {
            let bytes = self.pack_bytes(&at, m.storage).await?;
            let range = s.offset as usize..(s.offset + s.len) as usize;
            if bytes
                .get(range.clone())
                .is_some_and(|d| cidutil::verify(cid, d).is_ok())
            {
                return Ok(Some(bytes.slice(range)));
            }
        }
        Ok(None)
    }

    /// A pack's bytes: from the cache, or where its manifest says they are
    /// (its row, from one node after another; or a co-located copy of its
    /// Garage block, then one node after another), each copy checked
    /// against the pack's hash.
    pub(super) async fn pack_bytes(
        &self,
        hash: &Hash,
        storage: PackStorage,
    ) -> Result<Bytes, Error> {
        if let Some(b) = self.store.cache.pack(hash) {
            return Ok(b);
        }
        let unreadable = |cause: String| Error::Unreadable {
            cid: pack_name(hash),
            cause,
        };
        let bytes = match storage {
            PackStorage::Rows => self
                .pack_row(hash)
                .await?
                .bytes()
                .map_err(|why| unreadable(why.into()))?,
            PackStorage::Blocks => match self.conn().read_colocated(hash).await {
                Some(b) if blake2sum(&b) == *hash => b,
                _ => self
                    .conn()
                    .rpc_get_block(*hash, |b| blake2sum(b) == *hash)
                    .await
                    .map_err(|e| unreadable(format!("pack: {e}")))?,
            },
        };
        self.store.cache.put_pack(hash, &bytes);
        Ok(bytes)
    }

    /// A pack's row, read from one node after another until one holds it,
    /// checked against the pack's hash.
    pub(super) async fn pack_row(&self, hash: &Hash) -> Result<PackRow, Error> {
        let (partition, key) = (pack::partition(self.id(), hash), pack::row_key(hash));
        // Each copy is hashed once: the bytes that match are kept.
        let good = |item: &K2VItem| {
            item.values().iter().find_map(|v| match v {
                DvvsValue::Value(b) if blake2sum(b) == *hash => Some(Bytes::copy_from_slice(b)),
                _ => None,
            })
        };
        let read = super::garage::retry_transient(|| async {
            Ok(self
                .conn()
                .rpc_k2v_get_unchanging(&partition, &key, good)
                .await?)
        })
        .await?;
        Ok(match read {
            None => PackRow::Missing,
            Some((_, Some(bytes))) => PackRow::Good(bytes),
            Some((item, None)) => {
                if item
                    .values()
                    .iter()
                    .any(|v| matches!(v, DvvsValue::Value(_)))
                {
                    PackRow::Wrong
                } else {
                    PackRow::Missing
                }
            }
        })
    }

    /// Deletes a block from every pack holding it (its slot joins the
    /// manifest's deleted set), the map first brought up to the counters
    /// if `sync`. Returns whether a pack held it live.
    pub(super) async fn delete_packed(
        &self,
        mh: &Multihash<64>,
        sync: bool,
    ) -> Result<bool, Error> {
        if sync {
            self.sync_packs().await?;
        }
        let mut deleted = Vec::new();
        for hash in self.packs.packs_holding(mh) {
            deleted.extend(self.delete_slot(&hash, mh).await?);
        }
        if deleted.is_empty() {
            return Ok(false);
        }
        self.packs.note(None, Change::Delete(*mh, deleted));
        Ok(true)
    }

    /// Deletes a block from a pack, or from the pack that replaced it.
    /// A compaction may retire the pack while this writes: then it reads
    /// the manifest again and deletes the block from the successor too.
    /// The compactor, after retiring, reads the manifest again as well and
    /// carries every delete it finds to the successor, so that of two
    /// writers racing, at least one sees the other's write (both wrote to
    /// a quorum before reading from one).
    pub(super) async fn delete_slot(
        &self,
        hash: &Hash,
        mh: &Multihash<64>,
    ) -> Result<Vec<Hash>, Error> {
        let Some((at, read)) = self.read_current(hash).await? else {
            return Ok(Vec::new());
        };
        let mut m = read.manifest.clone();
        let hits: Vec<usize> = m
            .live()
            .filter(|(_, s)| s.mh == *mh)
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        for i in hits {
            m.delete(i);
        }
        // With the item's causal context: a concurrent delete of another
        // slot leaves a sibling, and readers unite the deleted sets.
        self.rewrite_manifest(&at, read, &m).await?;
        // Every pack on the way (retired ones hold no live slot: the map
        // deletes nothing that lives there).
        let mut deleted = vec![*hash, at];
        if let Some(read) = self.read_manifest(&at).await? {
            if let Some(r) = read.manifest.retired {
                deleted.extend(Box::pin(self.delete_slot(&r.by, mh)).await?);
            }
        }
        Ok(deleted)
    }

    /// The namespace's manifests, partition by partition
    /// ([`packed_entries`] turns them into the entries of their live blocks).
    pub(super) fn list_packed(
        &self,
    ) -> impl futures::Stream<Item = Result<Vec<(Hash, Manifest)>, Error>> + '_ {
        // Partitions are listed a few at a time (most are small), in order.
        futures::stream::iter(0..PACK_PARTITIONS)
            .map(move |p| self.list_manifests(p))
            .buffered(LIST_CONCURRENCY)
    }
}

#[cfg(feature = "integration-tests")]
impl Namespace {
    /// For tests: a delete through a map that has not caught up, as
    /// within the counters' lag: only the packs this connector knows now
    /// are reached (the delete marker is written as by any delete).
    #[doc(hidden)]
    pub async fn delete_unsynced(&self, cid: &Cid) -> Result<bool, Error> {
        self.delete_entry_with(cid, false, false).await
    }

    /// For tests: stores a pack's row and no manifest, as a crash between
    /// the two leaves it, written `age` ago by its nonce. Returns the
    /// pack's hash.
    #[doc(hidden)]
    pub async fn write_unnamed_pack_row(
        &self,
        blocks: &[(Cid, Bytes)],
        age: std::time::Duration,
    ) -> Result<Hash, Error> {
        let now = garage_util::time::now_msec();
        let mut b = PackBuilder::unique_at(now.saturating_sub(age.as_millis() as u64));
        for (cid, data) in blocks {
            b.push(*cid.hash(), cid.codec(), data);
        }
        let (data, hash, _) = b.finish(PackStorage::Rows);
        let p = hash.as_slice()[0] as usize;
        self.insert_new(p, &hash, pack::row_key(&hash), data.to_vec())
            .await?;
        Ok(hash)
    }

    /// For tests: deletes a block from one pack (and the packs that
    /// replaced it), as a delete through a map that knows only that pack
    /// does.
    #[doc(hidden)]
    pub async fn delete_from_pack(&self, pack: &Hash, cid: &Cid) -> Result<bool, Error> {
        Ok(!self.delete_slot(pack, cid.hash()).await?.is_empty())
    }
}

/// Whether a pack has no live block and was not replaced (a retired pack
/// waits for its grace period: maps may still point at it) and is not a
/// compaction's unfinished new pack (its sources name it).
pub(super) fn is_spent(m: &Manifest) -> bool {
    m.retired.is_none() && m.sources.is_empty() && m.live().next().is_none()
}

/// The live blocks of some manifests as entries (`packed` set, `hash` the
/// pack's), each block once: `seen` holds the map keys of those listed
/// already, so that a listing of the index can skip them too.
pub(super) fn packed_entries(
    manifests: Vec<(Hash, Manifest, Option<HashSet<usize>>)>,
    seen: &mut HashSet<u64>,
) -> Vec<(Multihash<64>, Entry)> {
    {
        let mut out = Vec::new();
        for (hash, m, only) in manifests {
            for (i, s) in m.live() {
                if only.as_ref().is_some_and(|o| !o.contains(&i)) {
                    continue;
                }
                if seen.insert(pack::map_key(&s.mh)) {
                    out.push((
                        s.mh,
                        Entry {
                            hash,
                            size: s.len,
                            generation: 0,
                            codec: s.codec,
                            inline: None,
                            packed: Some(InPack {
                                offset: s.offset,
                                storage: m.storage,
                            }),
                        },
                    ));
                }
            }
        }
        out
    }
}

impl Namespace {
    /// Removes the packs of which no block is live: each manifest (a
    /// tombstone, written with the causal context of a read that found
    /// every slot deleted), then the pack's row, or its refs, after which
    /// Garage collects its copies. Returns how many packs it removed.
    ///
    /// A manifest is only ever rewritten to add deleted slots, so one with
    /// every slot deleted stays so, with one exception: a delete that read
    /// it before its last live slot was deleted by someone else, and writes
    /// after this tombstone, leaves a sibling value that lacks the other
    /// deletes. That needs two connectors deleting the same last block of a
    /// pack while this runs; the block would then be listed again, and its
    /// reads would fail once Garage collects the pack.
    pub async fn reclaim_packs(&self, mut progress: impl FnMut(u64)) -> Result<u64, Error> {
        let mut removed = 0;
        for p in 0..PACK_PARTITIONS {
            for (hash, m) in self.list_manifests(p).await? {
                if is_spent(&m) && self.remove_pack(&hash, |m, _| is_spent(m)).await? {
                    removed += 1;
                    progress(removed);
                }
            }
        }
        Ok(removed)
    }

    /// Removes a pack if a quorum read of its manifest still finds it
    /// `removable`: the manifest's tombstone (with that read's causal
    /// context) first, since a manifest must never name a pack that is not
    /// stored, then its row, or its refs (Garage then collects its copies).
    pub(super) async fn remove_pack(
        &self,
        hash: &Hash,
        removable: impl Fn(&Manifest, u64) -> bool,
    ) -> Result<bool, Error> {
        let Some(ManifestRead {
            partition,
            key,
            item,
            manifest: now,
            ..
        }) = self.read_manifest(hash).await?
        else {
            return Ok(false);
        };
        if !removable(&now, super::compact::item_time(&item)) {
            return Ok(false);
        }
        self.tombstone(hash.as_slice()[0] as usize, partition, key, &item)
            .await?;
        match now.storage {
            PackStorage::Rows => self.delete_pack_row(hash).await?,
            PackStorage::Blocks => self.delete_refs(hash).await?,
        }
        self.packs.note_removed(hash);
        Ok(true)
    }

    /// Writes a manifest's new value with the causal context of the read
    /// that gave `read`, and counts the change as ours.
    pub(super) async fn rewrite_manifest(
        &self,
        hash: &Hash,
        read: ManifestRead,
        m: &Manifest,
    ) -> Result<(), Error> {
        let value = m.encode();
        let change = value.len() as i64 - value_bytes(&read.item);
        let result = self
            .conn()
            .rpc_k2v_insert(
                read.partition,
                read.key,
                Some(read.item.causal_context()),
                DvvsValue::Value(value),
            )
            .await;
        self.packs
            .note_write(hash.as_slice()[0] as usize, 0, change, &result);
        result?;
        Ok(())
    }

    /// Writes a new item of pack `hash`'s partition `p` (its row or its
    /// manifest) blindly: the pack's nonce makes the key new. Counts the
    /// change as ours; a failed write, which may or may not have reached a
    /// node, has the partition listed again instead.
    pub(super) async fn insert_new(
        &self,
        p: usize,
        hash: &Hash,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let len = value.len() as i64;
        let result = self
            .conn()
            .rpc_k2v_insert(
                pack::partition(self.id(), hash),
                key,
                None,
                DvvsValue::Value(value),
            )
            .await;
        self.packs.note_write(p, 1, len, &result);
        result?;
        Ok(())
    }

    /// Tombstones a pack's row (with the causal context of a read, which a
    /// K2V delete needs to replace the value).
    pub(super) async fn delete_pack_row(&self, hash: &Hash) -> Result<(), Error> {
        let partition = pack::partition(self.id(), hash);
        let key = pack::row_key(hash);
        let live = |item: &K2VItem| {
            item.values()
                .iter()
                .any(|v| matches!(v, DvvsValue::Value(_)))
                .then_some(())
        };
        let Some((item, _)) = self
            .conn()
            .rpc_k2v_get_unchanging(&partition, &key, live)
            .await?
        else {
            return Ok(());
        };
        if item
            .values()
            .iter()
            .all(|v| matches!(v, DvvsValue::Deleted))
        {
            return Ok(());
        }
        self.tombstone(hash.as_slice()[0] as usize, partition, key, &item)
            .await
    }

    /// Replaces an item of pack `hash`'s partition (its manifest or its
    /// row) by a tombstone, with the causal context of the read that gave
    /// `item`, and counts the change as ours.
    pub(super) async fn tombstone(
        &self,
        p: usize,
        partition: K2VItemPartition,
        key: String,
        item: &garage_model::k2v::item_table::K2VItem,
    ) -> Result<(), Error> {
        let result = self
            .conn()
            .rpc_k2v_insert(
                partition,
                key,
                Some(item.causal_context()),
                DvvsValue::Deleted,
            )
            .await;
        // A failed write may have reached a node: then the partition is
        // listed again rather than counted.
        self.packs.note_write(p, -1, -value_bytes(item), &result);
        result?;
        Ok(())
    }

    /// Tombstones whatever is left in the namespace's manifest partitions:
    /// for namespace deletion, once every block is deleted and every pack
    /// reclaimed. What is left then is rows no manifest names (a crash
    /// between a pack's row and its manifest, or between a reclaim's two
    /// tombstones), whose bytes no other path reaches. Reads those rows.
    /// Returns how many items it removed.
    pub(super) async fn purge_pack_partitions(&self) -> Result<u64, Error> {
        let mut removed = 0;
        for p in 0..PACK_PARTITIONS {
            let mut pages = std::pin::pin!(self.partition_pages(p, None, PURGE_PAGE));
            while let Some(page) = pages.try_next().await? {
                for item in page {
                    if item
                        .values()
                        .iter()
                        .all(|v| matches!(v, DvvsValue::Deleted))
                    {
                        continue;
                    }
                    let partition = pack::partition_key_of(self.id(), p);
                    let key = item.sort_key.clone();
                    self.tombstone(p, partition, key, &item).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Live packed blocks in one manifest partition.
    pub(super) async fn count_packed(&self, p: usize) -> Result<u64, Error> {
        Ok(self
            .list_manifests(p)
            .await?
            .iter()
            .map(|(_, m)| m.live().count() as u64)
            .sum())
    }

    /// A block's entry, wherever it is stored: in a pack (`packed` set,
    /// `hash` the pack's), inline, or as a block of its own.
    pub async fn stored_entry(&self, mh: &Multihash<64>) -> Result<Option<Entry>, Error> {
        Ok(self.lookup(mh, false).await?.map(|f| f.entry))
    }

    /// The pack map's counters.
    pub fn pack_stats(&self) -> PackStats {
        self.packs.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(sig: u8, entries: i64, bytes: i64) -> PackCounted {
        PackCounted {
            signature: vec![sig],
            entries,
            bytes,
        }
    }

    #[test]
    fn our_own_packs_explain_their_counters_and_others_changes_do_not() {
        let mut p = Partition {
            seen: Some(counted(0, 5, 1000)),
            ..Default::default()
        };
        assert!(!p.moved(Some(&counted(0, 5, 1000))), "unchanged");
        assert!(p.moved(Some(&counted(1, 5, 1002))), "a foreign delete");
        assert!(p.moved(Some(&counted(1, 6, 1300))), "a foreign pack");
        assert!(p.moved(None), "the partition emptied");
        // Our pack: counted or not yet, it explains the change.
        p.our_entries.note(1);
        p.our_bytes.note(300);
        assert!(!p.moved(Some(&counted(1, 6, 1300))));
        assert!(!p.moved(Some(&counted(2, 5, 1000))));
        // Beyond what ours explain: a foreign delete on top of our pack.
        assert!(p.moved(Some(&counted(3, 6, 1302))));
        // And a partition first listed empty.
        let mut empty = Partition::default();
        assert!(!empty.moved(None));
        assert!(empty.moved(Some(&counted(0, 1, 300))));
        empty.our_entries.note(1);
        empty.our_bytes.note(300);
        assert!(!empty.moved(Some(&counted(0, 1, 300))));
    }

    fn pack_in(partition: u8, first: u32) -> (Hash, Manifest) {
        loop {
            let mut b = PackBuilder::unique();
            for i in first..first + 8 {
                b.push(mh_of(partition, i), 0x55, &i.to_le_bytes());
            }
            let (_, hash, m) = b.finish(PackStorage::Rows);
            if hash.as_slice()[0] == partition {
                return (hash, m);
            }
        }
    }

    fn mh_of(partition: u8, i: u32) -> Multihash<64> {
        Multihash::wrap(0x12, &[&i.to_le_bytes()[..], &[partition; 28]].concat()).unwrap()
    }

    /// A write of ours that failed may or may not have reached a node:
    /// it explains no counter move, the partition is listed again at the
    /// next poll and not saved meanwhile.
    #[tokio::test]
    async fn a_failed_write_of_ours_explains_nothing() {
        let packs = NsPacks::new(Weak::new(), "ns".into());
        for p in [4, 5] {
            packs.parts.lock().unwrap()[p].seen = Some(counted(p as u8, 2, 500));
        }
        packs.note_write(4, 2, 600, &Ok::<(), ()>(()));
        packs.note_write(5, 2, 600, &Err::<(), ()>(()));
        let parts = packs.parts.lock().unwrap();
        // Another connector's pack of the same size moved both counters.
        assert!(
            !parts[4].moved(Some(&counted(40, 4, 1100))),
            "ours explains it"
        );
        assert!(
            parts[5].moved(Some(&counted(50, 4, 1100))),
            "a failed write explains nothing"
        );
        assert!(
            parts[5].moved(Some(&counted(5, 2, 500))),
            "listed again even unmoved"
        );
        drop(parts);
        packs.built.store(true, Ordering::Release);
        let saved = packs.saved_partitions(&BTreeMap::new());
        assert!(saved.iter().all(|s| s.partition != 5));
    }

    /// A partition is saved with the counters its packs are known to
    /// cover, and restored only if the counters have not moved since.
    #[tokio::test]
    async fn the_map_is_saved_with_its_counters_and_restored_where_they_did_not_move() {
        let packs = NsPacks::new(Weak::new(), "ns".into());
        for p in [1u8, 2, 3] {
            let (hash, m) = pack_in(p, 100 * p as u32);
            packs.map.write().unwrap().insert(hash, &m);
            packs.parts.lock().unwrap()[p as usize].seen = Some(counted(p, 2, 500));
        }
        // Partition 3 has a pack of ours not yet counted: not saved.
        packs.note_counted(3, 2, 600);
        let now: BTreeMap<usize, PackCounted> = [1, 2, 3]
            .into_iter()
            .map(|p| (p, counted(p as u8, 2, 500)))
            .collect();
        assert!(packs.saved_partitions(&now).is_empty(), "saved unbuilt");
        packs.built.store(true, Ordering::Release);
        let saved = packs.saved_partitions(&now);
        assert_eq!(saved.len(), PACK_PARTITIONS - 1);
        assert!(saved.iter().all(|s| s.partition != 3));
        let by = |p: u16| saved.iter().find(|s| s.partition == p).unwrap();
        assert_eq!((by(1).packs.len(), by(1).seen.clone()), (1, Some(vec![1])));
        assert_eq!((by(9).packs.len(), by(9).seen.clone()), (0, None));

        // Restart: partition 2 moved meanwhile; 1 did not.
        let later: BTreeMap<usize, PackCounted> =
            [(1, counted(1, 2, 500)), (2, counted(7, 4, 900))].into();
        let bytes = super::super::snapshot::encode(
            [0; 32],
            super::super::snapshot::Snapshot {
                shards: Vec::new(),
                partitions: saved,
            },
        );
        let back = super::super::snapshot::decode(&bytes, &[0; 32]).unwrap();
        let fresh = NsPacks::new(Weak::new(), "ns".into());
        let restored = fresh.restore(back.partitions, &later);
        assert!(restored[1] && restored[0] && !restored[2] && !restored[3]);
        assert_eq!(
            fresh.stats().partitions_restored,
            PACK_PARTITIONS as u64 - 2
        );
        assert_eq!(fresh.locate(&mh_of(1, 100)).len(), 1, "restored pack");
        assert!(
            fresh.locate(&mh_of(2, 200)).is_empty(),
            "moved: to be listed"
        );
        assert_eq!(
            fresh.parts.lock().unwrap()[1]
                .seen
                .as_ref()
                .map(|c| c.bytes),
            Some(500)
        );
    }
}
