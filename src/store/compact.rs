//! Compaction of packs: packs whose deleted blocks pass half their bytes
//! are rewritten without them, and what no read needs any more is removed
//! (packs with no live block, packs retired longer than the grace period,
//! pack rows no manifest names), and inline index entries are moved into
//! packs. docs/DESIGN.md ("Packing small blocks",
//! "Compaction") says why each step is where it is.
//!
//! A compaction writes a new pack `N` holding the live blocks of a few
//! packs `P` (its row, then its manifest), then retires each `P`: its
//! manifest becomes *retired by `N`*, a value written with the causal
//! context of a quorum read. `P`'s row stays until the grace period has
//! passed, so a connector whose map still points at `P` reads it; maps
//! forget a retired pack when they next list its partition (within a
//! minute for a daemon) or when a quorum read meets the retirement. A
//! kill at any point leaves every live block in `P`, in `N`, or in both.

use std::collections::HashSet;
use std::time::Duration;

use cid::Cid;
use futures::{StreamExt, TryStreamExt};
use garage_model::k2v::item_table::DvvsValue;
use garage_util::data::Hash;
use multihash::Multihash;
use serde::Serialize;

use super::pack::{self, Manifest, PackBuilder, Retired, PACK_MAX_BYTES, PACK_MAX_SLOTS};
use super::packed::{is_spent, pack_name, Change, PACK_MIN_BLOCKS, PACK_PARTITIONS};
use super::{Error, Namespace};
use crate::cid as cidutil;

/// How long a retired pack, or a pack row no manifest names, is kept by
/// default: far longer than any map stays stale (a daemon relists every
/// partition within a minute) or than a pack write between its row and its
/// manifest takes. Garage keeps its own tombstones as long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Bytes of inline blocks moved into packs whose entries are removed
/// together (they are held in memory until then, and each such batch waits
/// for the counters once).
const INLINE_BATCH_BYTES: usize = 64 << 20;

/// Pack rows no manifest names are kept at least this long, whatever the
/// grace period: a connector may be between a pack's row and its manifest
/// (seconds), and machines' clocks differ.
pub const UNNAMED_ROW_MIN_AGE: Duration = Duration::from_secs(3600);

/// Items read per request when pack rows are scanned (rows are up to
/// 64 KiB each).
const ROW_PAGE: usize = 16;

/// What to do.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Retired packs and unnamed pack rows younger than this are kept.
    pub grace: Duration,
    /// Count what would be done; write nothing.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
        }
    }
}

/// What a compaction found and did (with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactSummary {
    pub namespace: String,
    pub dry_run: bool,
    /// Packs in use (neither retired nor spent) before the run.
    pub packs: u64,
    /// Live blocks in them.
    pub blocks: u64,
    /// Packs rewritten without their deleted blocks, now retired.
    pub compacted: u64,
    /// New packs written (for compacted packs and inline entries).
    pub written: u64,
    /// Live blocks copied into the new packs.
    pub blocks_moved: u64,
    /// Blocks moved from inline index entries into new packs.
    pub inline_packed: u64,
    /// Bytes of deleted blocks in the compacted packs: freed when those
    /// are removed, a grace period later.
    pub bytes_freed: u64,
    /// Packs with no live block, removed.
    pub spent_removed: u64,
    /// Retired packs removed, their grace period over.
    pub retired_removed: u64,
    /// Retired packs kept until their grace period is over.
    pub retired_kept: u64,
    /// Pack rows no manifest names (a crash between a pack's row and its
    /// manifest), older than the grace period, removed.
    pub orphans_removed: u64,
    /// Packs left as they are because a live block in them could not be
    /// read or did not match its CID (`verify` reports them).
    pub skipped: Vec<String>,
}

/// Whether a pack is worth rewriting: its deleted blocks pass half its
/// bytes.
fn worth_compacting(m: &Manifest) -> bool {
    let total: u64 = m.slots.iter().map(|s| s.len as u64).sum();
    let live: u64 = m.live().map(|(_, s)| s.len as u64).sum();
    live < total && (total - live) * 2 > total
}

/// A pack being compacted, and where each of its live slots went in the
/// new pack (`(slot, new slot)`).
struct Member {
    hash: Hash,
    moved: Vec<(usize, usize)>,
}

impl Namespace {
    /// Compacts the namespace's packs (module docs): removes spent packs,
    /// retired packs and unnamed rows older than `opts.grace`, and rewrites
    /// packs that are mostly deleted. `progress` is called after each
    /// manifest partition and each new pack. Run one at a time per
    /// namespace: two at once lose nothing but leave duplicate copies.
    pub async fn compact_packs(
        &self,
        opts: &CompactOptions,
        mut progress: impl FnMut(&CompactSummary),
    ) -> Result<CompactSummary, Error> {
        let mut summary = CompactSummary {
            namespace: self.name().to_string(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let now = garage_util::time::now_msec();
        let grace = u64::try_from(opts.grace.as_millis()).unwrap_or(u64::MAX);
        let expired = |at: u64| at.saturating_add(grace) <= now;
        let row_grace = grace.max(UNNAMED_ROW_MIN_AGE.as_millis() as u64);
        let row_expired = |at: u64| at.saturating_add(row_grace) <= now;
        let counters = super::filter::pack_counters(self).await?;
        let mut candidates = Vec::new();
        for p in 0..PACK_PARTITIONS {
            let manifests = self.list_manifests(p).await?;
            // Items the partition's counters should count: a row pack's row
            // and manifest, a block pack's manifest.
            let expected: i64 = manifests
                .iter()
                .map(|(_, m)| match m.storage {
                    pack::PackStorage::Rows => 2,
                    pack::PackStorage::Blocks => 1,
                })
                .sum();
            let named: HashSet<Hash> = manifests.iter().map(|(h, _)| *h).collect();
            for (hash, m) in manifests {
                match m.retired {
                    Some(r) if expired(r.at) => {
                        let gone = |m: &Manifest| m.retired.is_some_and(|r| expired(r.at));
                        if opts.dry_run || self.remove_pack(&hash, gone).await? {
                            summary.retired_removed += 1;
                        }
                    }
                    Some(_) => summary.retired_kept += 1,
                    None if is_spent(&m) => {
                        if opts.dry_run || self.remove_pack(&hash, is_spent).await? {
                            summary.spent_removed += 1;
                        }
                    }
                    None => {
                        summary.packs += 1;
                        summary.blocks += m.live().count() as u64;
                        if worth_compacting(&m) {
                            candidates.push((hash, m));
                        }
                    }
                }
            }
            // Counters lag and may be off: they only decide whether the
            // partition's rows (all its pack bytes) are worth reading.
            if counters.get(&p).is_some_and(|c| c.entries > expected) {
                summary.orphans_removed += self
                    .remove_unnamed_rows(p, &named, &row_expired, opts.dry_run)
                    .await?;
            }
            progress(&summary);
        }
        // Greedily, in listing order, as many packs per new pack as fit.
        let mut group: Vec<(Hash, Manifest)> = Vec::new();
        let (mut bytes, mut slots) = (pack::NONCE_LEN, 0);
        for (hash, m) in candidates {
            let (b, n) = m
                .live()
                .fold((0, 0), |(b, n), (_, s)| (b + s.len as usize, n + 1));
            if bytes + b > PACK_MAX_BYTES || slots + n > PACK_MAX_SLOTS {
                self.compact_group(std::mem::take(&mut group), opts, &mut summary)
                    .await?;
                progress(&summary);
                (bytes, slots) = (pack::NONCE_LEN, 0);
            }
            group.push((hash, m));
            bytes += b;
            slots += n;
        }
        if !group.is_empty() {
            self.compact_group(group, opts, &mut summary).await?;
            progress(&summary);
        }
        self.pack_inline(opts, &mut summary, &mut progress).await?;
        Ok(summary)
    }

    /// Moves the namespace's inline index entries (lone small puts) into
    /// packs, read from the listing as it goes: the packs first; then, for
    /// each 64 MiB moved, the entries ([`Self::remove_moved_entries`]). A
    /// kill leaves a block inline, packed, or both (readers take either;
    /// listings name it once).
    async fn pack_inline(
        &self,
        opts: &CompactOptions,
        summary: &mut CompactSummary,
        progress: &mut impl FnMut(&CompactSummary),
    ) -> Result<(), Error> {
        let mut entries = std::pin::pin!(self
            .list_entries()
            .try_filter(|(_, e)| futures::future::ready(e.inline.is_some())));
        let mut first = Vec::new();
        while first.len() < PACK_MIN_BLOCKS {
            match entries.try_next().await? {
                Some(entry) => first.push(entry),
                None => return Ok(()), // a pack would cost more than the entries
            }
        }
        let mut all = futures::stream::iter(first.into_iter().map(Ok)).chain(entries);
        let mut moved: Vec<(Hash, Vec<(Multihash<64>, bytes::Bytes)>)> = Vec::new();
        let mut moved_bytes = 0;
        let mut b = PackBuilder::unique();
        let mut in_b = Vec::new();
        while let Some((mh, e)) = all.try_next().await? {
            let data = e.inline.expect("filtered");
            if cidutil::verify(&Cid::new_v1(e.codec, mh), &data).is_err() {
                summary.skipped.push(format!(
                    "{}: its inline copy does not match its CID",
                    cidutil::raw_cid(mh)
                ));
                continue;
            }
            if !b.fits(data.len()) {
                let full = std::mem::replace(&mut b, PackBuilder::unique());
                moved.push(
                    self.store_inline(full, std::mem::take(&mut in_b), opts, summary)
                        .await?,
                );
                progress(summary);
                if moved_bytes >= INLINE_BATCH_BYTES {
                    self.remove_moved_entries(std::mem::take(&mut moved), opts)
                        .await?;
                    moved_bytes = 0;
                }
            }
            moved_bytes += data.len();
            b.push(mh, e.codec, &data);
            in_b.push((mh, data));
        }
        if !in_b.is_empty() {
            moved.push(self.store_inline(b, in_b, opts, summary).await?);
            progress(summary);
        }
        self.remove_moved_entries(moved, opts).await
    }

    /// Tombstones the inline entries of blocks moved into packs, once every
    /// filtered connector's map can have learned the packs (a filtered
    /// connector learns a pack at its next counter poll after Garage counts
    /// it; an entry tombstoned sooner could read as absent there, its
    /// filter relisted before its map). An entry deleted meanwhile was a
    /// delete by someone whose map did not know the pack: the block is
    /// deleted from the pack too.
    async fn remove_moved_entries(
        &self,
        moved: Vec<(Hash, Vec<(Multihash<64>, bytes::Bytes)>)>,
        opts: &CompactOptions,
    ) -> Result<(), Error> {
        if opts.dry_run || moved.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(super::COUNTER_LAG + super::filter::POLL_INTERVAL * 2).await;
        for (pack, blocks) in moved {
            for (mh, data) in blocks {
                let (entry, context) = self.entry(&mh).await?;
                match entry {
                    Some(e) if e.inline.as_ref() == Some(&data) => {
                        self.tombstone_entry(&mh, context).await?;
                    }
                    Some(_) => {}
                    None => {
                        self.delete_slot(&pack, &mh).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes one pack of inline blocks (unless `dry_run`); its hash and
    /// blocks.
    async fn store_inline(
        &self,
        b: PackBuilder,
        blocks: Vec<(Multihash<64>, bytes::Bytes)>,
        opts: &CompactOptions,
        summary: &mut CompactSummary,
    ) -> Result<(Hash, Vec<(Multihash<64>, bytes::Bytes)>), Error> {
        summary.written += 1;
        summary.inline_packed += blocks.len() as u64;
        if opts.dry_run {
            return Ok((Hash::default(), blocks));
        }
        let (hash, _) = self.store_pack(b, self.conn().config.pack_storage).await?;
        Ok((hash, blocks))
    }

    /// Writes one new pack with the live blocks of `group`, then retires
    /// each pack of the group.
    async fn compact_group(
        &self,
        group: Vec<(Hash, Manifest)>,
        opts: &CompactOptions,
        summary: &mut CompactSummary,
    ) -> Result<(), Error> {
        let mut b = PackBuilder::unique();
        let mut members = Vec::new();
        for (hash, listed) in group {
            let bytes = match self.pack_bytes(&hash, listed.storage).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    summary.skipped.push(format!("{}: {e}", pack_name(&hash)));
                    continue;
                }
            };
            let live: Vec<_> = listed.live().collect();
            let bad = live.iter().find(|(_, s)| {
                let cid = Cid::new_v1(s.codec, s.mh);
                let range = s.offset as usize..(s.offset + s.len) as usize;
                bytes
                    .get(range)
                    .is_none_or(|d| cidutil::verify(&cid, d).is_err())
            });
            if let Some((i, _)) = bad {
                summary.skipped.push(format!(
                    "{}: slot {i} does not match its CID",
                    pack_name(&hash)
                ));
                continue;
            }
            // Every live slot, even a block another member holds too: a
            // delete is carried slot by slot (below), and a copy that some
            // connector saw live must stay live.
            let moved = live
                .iter()
                .map(|(i, s)| {
                    let d = &bytes[s.offset as usize..(s.offset + s.len) as usize];
                    (*i, b.push(s.mh, s.codec, d))
                })
                .collect();
            summary.bytes_freed += listed
                .slots
                .iter()
                .enumerate()
                .filter(|(i, _)| listed.is_deleted(*i))
                .map(|(_, s)| s.len as u64)
                .sum::<u64>();
            members.push(Member { hash, moved });
        }
        if members.is_empty() {
            return Ok(());
        }
        let moved: u64 = members.iter().map(|m| m.moved.len() as u64).sum();
        if !opts.dry_run {
            let storage = self.conn().config.pack_storage;
            let (new, _) = self.store_pack(b, storage).await?;
            for m in &members {
                self.retire(m, &new).await?;
            }
        }
        summary.written += 1;
        summary.compacted += members.len() as u64;
        summary.blocks_moved += moved;
        Ok(())
    }

    /// Retires a compacted pack in favour of `new`, which holds copies of
    /// its live slots. Deletes of the pack's blocks made since its listing
    /// are carried to `new` first, and those racing the retirement after
    /// (its manifest read again once the retirement is on a quorum).
    async fn retire(&self, m: &Member, new: &Hash) -> Result<(), Error> {
        let all = || m.moved.iter().map(|(_, j)| *j).collect::<Vec<_>>();
        let deleted_in = |now: &Manifest| {
            m.moved
                .iter()
                .filter(|(i, _)| now.is_deleted(*i))
                .map(|(_, j)| *j)
                .collect::<Vec<_>>()
        };
        let read = match self.read_manifest(&m.hash).await? {
            // Removed meanwhile (every block deleted), or compacted by
            // someone else: our copies are deleted blocks, or duplicates.
            None => return self.delete_new_slots(new, all()).await,
            Some(read) if read.manifest.retired.is_some() => {
                return self.delete_new_slots(new, all()).await
            }
            Some(read) => read,
        };
        self.delete_new_slots(new, deleted_in(&read.manifest))
            .await?;
        let mut retired = read.manifest.clone();
        retired.retired = Some(Retired {
            by: *new,
            at: garage_util::time::now_msec(),
        });
        self.rewrite_manifest(&m.hash, read, &retired).await?;
        let p = m.hash.as_slice()[0] as usize;
        self.packs.note(Some(p), Change::Insert(m.hash, retired));
        if let Some(again) = self.read_manifest(&m.hash).await? {
            self.delete_new_slots(new, deleted_in(&again.manifest))
                .await?;
        }
        Ok(())
    }

    /// Marks slots of a pack deleted (those not deleted yet).
    async fn delete_new_slots(&self, hash: &Hash, slots: Vec<usize>) -> Result<(), Error> {
        if slots.is_empty() {
            return Ok(());
        }
        let Some(read) = self.read_manifest(hash).await? else {
            return Ok(());
        };
        let mut m = read.manifest.clone();
        let fresh: Vec<usize> = slots.into_iter().filter(|i| !m.is_deleted(*i)).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        for &i in &fresh {
            m.delete(i);
        }
        self.rewrite_manifest(hash, read, &m).await?;
        let p = hash.as_slice()[0] as usize;
        self.packs.note(Some(p), Change::Insert(*hash, m));
        Ok(())
    }

    /// Tombstones the rows of partition `p` that no manifest names (`named`
    /// holds the partition's manifests as listed), once their write time
    /// (the pack's nonce) has `expired`; a quorum read of the manifest
    /// confirms it is still missing first. Reads every row of the
    /// partition. Returns how many it removed (with `dry_run`, found).
    async fn remove_unnamed_rows(
        &self,
        p: usize,
        named: &HashSet<Hash>,
        expired: &impl Fn(u64) -> bool,
        dry_run: bool,
    ) -> Result<u64, Error> {
        let mut removed = 0;
        let mut pages = std::pin::pin!(self.partition_pages(p, None, ROW_PAGE));
        'pages: while let Some(page) = pages.try_next().await? {
            for item in page {
                if item.sort_key.as_str() >= pack::MANIFESTS_FROM {
                    break 'pages;
                }
                let Some(hash) = pack::parse_row_key(&item.sort_key) else {
                    continue;
                };
                let written = item
                    .values()
                    .iter()
                    .filter_map(|v| match v {
                        DvvsValue::Value(b) => pack::written_at(b),
                        DvvsValue::Deleted => None,
                    })
                    .max();
                let Some(written) = written else {
                    continue; // a tombstone
                };
                if named.contains(&hash) || !expired(written) {
                    continue;
                }
                if self.read_manifest(&hash).await?.is_some() {
                    continue; // written since the listing
                }
                if !dry_run {
                    let (partition, key) =
                        (pack::partition(self.id(), &hash), item.sort_key.clone());
                    self.tombstone(p, partition, key, &item).await?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}
