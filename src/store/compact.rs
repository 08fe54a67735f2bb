//! Compaction of packs: packs whose deleted blocks pass half their bytes
//! are rewritten without them, and what no read needs any more is removed
//! (packs with no live block, packs retired longer than the grace period,
//! pack rows no manifest names). docs/DESIGN.md ("Compaction") says why
//! each step is where it is.
//!
//! A compaction writes a new pack `N` holding the live blocks of a few
//! packs `P` (its row, then its manifest, which lists the `P` as its
//! *sources*, slot by slot), then retires each `P`: its manifest becomes
//! *retired by `N`*, a value written with the causal context of a quorum
//! read, and the deletes made to `P` meanwhile are carried to `N`. Once
//! every `P` is retired, `N`'s sources are cleared. A run that finds a pack
//! whose sources are still listed (its compaction was killed or failed
//! midway) finishes that work first. `P`'s row stays until the grace
//! period has passed (at least an hour), so a connector whose map still
//! points at `P` reads it. One run at a time per namespace: a run holds a
//! lease in the cluster.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cid::Cid;
use futures::TryStreamExt;
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::{blake2sum, Hash};
use serde::{Deserialize, Serialize};

use super::pack::{
    self, Manifest, PackBuilder, PackStorage, Retired, Source, PACK_MAX_BYTES, PACK_MAX_SLOTS,
};
use super::packed::{is_spent, pack_name, Change, ManifestRead, PACK_PARTITIONS};
use super::{Error, Namespace};
use crate::cid as cidutil;

/// How long a retired pack, or a pack row no manifest names, is kept by
/// default: far longer than any map stays stale (a daemon relists every
/// partition within a minute) or than a pack write between its row and its
/// manifest takes. Garage keeps its own tombstones as long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Retired packs and pack rows no manifest names are kept at least this
/// long, whatever the grace period: a connector may be between a pack's
/// row and its manifest (seconds), a map may still point at a retired
/// pack (a daemon's for up to a minute, a connector without a filter's
/// until its next miss), and machines' clocks differ.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// How long a compaction's lease lasts unless renewed (it is renewed as
/// the run goes, every third of this, so only a killed run's lease
/// lingers, this long; `--break-lease` takes it at once).
pub const LEASE: Duration = Duration::from_secs(2 * 60);

/// Items read per request when pack rows are scanned (rows are up to
/// 64 KiB each).
const ROW_PAGE: usize = 16;

/// What to do.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Retired packs and unnamed pack rows younger than this (and than
    /// [`MIN_AGE`]) are kept.
    pub grace: Duration,
    /// Count what would be done; write nothing.
    pub dry_run: bool,
    /// Take the namespace's compaction lease even if another run holds it
    /// (one that was killed: a live one would run beside this one).
    pub break_lease: bool,
    /// For tests.
    #[cfg(feature = "integration-tests")]
    #[doc(hidden)]
    pub hooks: CompactHooks,
}

/// For tests: what a compaction does differently.
#[cfg(feature = "integration-tests")]
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct CompactHooks {
    /// Remove retired packs and unnamed rows whatever their age.
    pub ignore_min_age: bool,
    /// Stop after the first new pack is written, before its sources are
    /// retired (as a kill there would).
    pub stop_after_new_pack: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
            break_lease: false,
            #[cfg(feature = "integration-tests")]
            hooks: CompactHooks::default(),
        }
    }
}

impl CompactOptions {
    /// The age from which a retired pack or an unnamed row may go (ms).
    fn min_age_ms(&self) -> u64 {
        let grace = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        #[cfg(feature = "integration-tests")]
        if self.hooks.ignore_min_age {
            return grace;
        }
        grace.max(MIN_AGE.as_millis() as u64)
    }
}

/// What a compaction found and did (with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactSummary {
    pub namespace: String,
    pub dry_run: bool,
    /// Packs in use (neither retired nor spent, nor the new pack of an
    /// unfinished compaction) before the run.
    pub packs: u64,
    /// Live blocks in them.
    pub blocks: u64,
    /// Compactions an earlier run left unfinished (killed, or an error
    /// while retiring), finished by this one.
    pub finished: u64,
    /// Packs rewritten without their deleted blocks, now retired.
    pub compacted: u64,
    /// New packs written.
    pub written: u64,
    /// Live blocks copied into the new packs from the packs retired.
    pub blocks_moved: u64,
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
    /// Delete markers older than the grace floor whose older copies are
    /// all gone, removed (`gone.rs`).
    pub markers_removed: u64,
    /// Packed copies older than their block's delete marker, deleted.
    pub copies_killed: u64,
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

/// What retiring a member found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retirement {
    /// Retired now, by us.
    Done,
    /// Retired by this new pack before (a run that did not finish).
    Already,
    /// Removed, or retired into another pack: the copies are deleted.
    Lost,
}

/// A lease this run holds.
struct Held {
    holder: String,
    /// When the lease was last renewed: on this process's monotonic clock,
    /// and on the cluster's (the time the storage node that took the
    /// write gave it).
    renewed: std::sync::Mutex<(Instant, u64)>,
}

impl Held {
    /// The cluster's time now, as far as this run can tell: its last
    /// renewal's cluster time plus the monotonic time since. A pause of
    /// this process is counted (a monotonic clock runs through SIGSTOP);
    /// a clock that stopped with a paused VM makes it early, so ages look
    /// younger and less is removed.
    fn cluster_now(&self) -> u64 {
        let (at, cluster) = *self.renewed.lock().unwrap();
        cluster.saturating_add(at.elapsed().as_millis() as u64)
    }
}

/// The value of a compaction lease (the item's key names the holder too).
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
}

/// The time of a K2V item's last write on the clock of the storage node
/// that took it (Garage's K2V causality timestamps): the cluster's time,
/// whatever this process's clock says. Garage itself needs its nodes'
/// clocks in step (NTP); a client's clock is never read.
pub(super) fn item_time(item: &K2VItem) -> u64 {
    item.causal_context()
        .vector_clock
        .values()
        .copied()
        .max()
        .unwrap_or(0)
}

/// The K2V partition of a namespace's compaction leases: one item per run
/// that holds or wants it, keyed by the run (in a bucket of its own: none
/// of the namespace's partitions, which the counters count).
fn lease_partition(namespace: &str) -> K2VItemPartition {
    K2VItemPartition {
        bucket_id: blake2sum(b"garage-ipfs/compaction-lease/v2"),
        partition_key: namespace.to_string(),
    }
}

/// Whether a lease item holds a value (not a tombstone).
fn is_live(item: &K2VItem) -> bool {
    item.values()
        .iter()
        .any(|v| matches!(v, DvvsValue::Value(_)))
}

/// Whether a lease last renewed at cluster time `t` still holds at `now`.
fn fresh(t: u64, now: u64) -> bool {
    now.saturating_sub(t) < LEASE.as_millis() as u64
}

impl Namespace {
    /// Compacts the namespace's packs (module docs): finishes compactions
    /// an earlier run left midway, removes spent packs, retired packs and
    /// unnamed rows older than the grace period, and rewrites packs that
    /// are mostly deleted. `progress` is called after each manifest
    /// partition and each new pack. Fails with
    /// [`Error::CompactionRunning`] while another run holds the
    /// namespace's lease.
    pub async fn compact_packs(
        &self,
        opts: &CompactOptions,
        mut progress: impl FnMut(&CompactSummary),
    ) -> Result<CompactSummary, Error> {
        if opts.dry_run {
            return self.compact_held(opts, None, &mut progress).await;
        }
        // Versions that do not know retirements refuse the namespace.
        self.store
            .register_format(self.name(), pack::FORMAT_COMPACTED)
            .await?;
        let holder = hex::encode(garage_util::data::gen_uuid().as_slice());
        let lease = self.take_lease(&holder, opts.break_lease).await?;
        let result = self.compact_held(opts, Some(&lease), &mut progress).await;
        if let Err(e) = self.release_lease(&holder).await {
            tracing::warn!(namespace = %self.name(), "compaction lease not released ({e}); it expires by itself");
        }
        result
    }

    /// [`Self::compact_packs`] once the lease is held (`None` for a dry run).
    async fn compact_held(
        &self,
        opts: &CompactOptions,
        lease: Option<&Held>,
        progress: &mut impl FnMut(&CompactSummary),
    ) -> Result<CompactSummary, Error> {
        let mut summary = CompactSummary {
            namespace: self.name().to_string(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        // Ages are measured on the cluster's clock (`item_time`), never on
        // this process's: a compactor whose clock is hours ahead must not
        // remove a row whose manifest is on its way. A dry run, which
        // removes nothing, counts with this process's clock.
        let now = lease.map_or_else(garage_util::time::now_msec, Held::cluster_now);
        let min_age = opts.min_age_ms();
        let expired = |written: u64| written.saturating_add(min_age) <= now;
        let counters = super::filter::pack_counters(self).await?;
        // Delete markers old enough that every pack written before them is
        // in the listing below: where those packs hold their block live.
        let old_markers = self
            .old_markers(now.saturating_sub(MIN_AGE.as_millis() as u64))
            .await?;
        let mut marked_live: HashMap<u64, Vec<Hash>> = HashMap::new();
        let (mut pending, mut retired_out, mut spent) = (Vec::new(), Vec::new(), Vec::new());
        let mut candidates = Vec::new();
        let mut in_pending = HashSet::new();
        for p in 0..PACK_PARTITIONS {
            self.keep_lease(lease).await?;
            let manifests = self.list_manifests_timed(p).await?;
            // Items the partition's counters should count: a row pack's row
            // and manifest, a block pack's manifest.
            let expected: i64 = manifests
                .iter()
                .map(|(_, m, _)| match m.storage {
                    pack::PackStorage::Rows => 2,
                    pack::PackStorage::Blocks => 1,
                })
                .sum();
            let named: HashSet<Hash> = manifests.iter().map(|(h, _, _)| *h).collect();
            for (hash, m, written) in manifests {
                for (_, slot) in m.live() {
                    let key = pack::map_key(&slot.mh);
                    if old_markers.contains(&key) {
                        marked_live.entry(key).or_default().push(hash);
                    }
                }
                match m.retired {
                    // The manifest's last write is its retirement or later.
                    Some(_) if expired(written) => retired_out.push(hash),
                    Some(_) => summary.retired_kept += 1,
                    None if is_spent(&m) => spent.push(hash),
                    // An unfinished compaction's new pack: its blocks are
                    // counted in its sources.
                    None if !m.sources.is_empty() => {
                        in_pending.extend(m.sources.iter().map(|s| s.hash));
                        pending.push(hash);
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
                    .remove_unnamed_rows(p, &named, &expired, opts.dry_run)
                    .await?;
            }
            progress(&summary);
        }
        // Their sources are retired by finishing them, not compacted again.
        candidates.retain(|(h, _)| !in_pending.contains(h));
        // Unfinished compactions first: until then, a delete made to one of
        // their sources is missing from the new pack.
        let mut unfinished = false;
        for hash in pending {
            self.keep_lease(lease).await?;
            if opts.dry_run {
                summary.finished += 1;
                continue;
            }
            match self.finish(&hash, lease).await {
                Ok(true) => summary.finished += 1,
                Ok(false) => (),
                Err(e @ Error::CompactionRunning { .. }) => return Err(e),
                Err(e) => {
                    unfinished = true;
                    summary
                        .skipped
                        .push(format!("{}: not finished: {e}", pack_name(&hash)));
                }
            }
        }
        if unfinished {
            // A retired pack a pending one still needs must stay; which
            // it is, the next run will know.
            retired_out.retain(|h| !in_pending.contains(h));
            spent.retain(|h| !in_pending.contains(h));
        }
        // Only then retired packs (their successor no longer needs them).
        for hash in retired_out {
            let gone = |m: &Manifest, written: u64| m.retired.is_some() && expired(written);
            if opts.dry_run || self.remove_pack(&hash, gone).await? {
                summary.retired_removed += 1;
            }
        }
        for hash in spent {
            if opts.dry_run || self.remove_pack(&hash, |m, _| is_spent(m)).await? {
                summary.spent_removed += 1;
            }
        }
        // Greedily, in listing order, as many packs per new pack as fit.
        let mut group: Vec<(Hash, Manifest)> = Vec::new();
        let (mut bytes, mut slots) = (pack::NONCE_LEN, 0);
        for (hash, m) in candidates {
            let (b, n) = m
                .live()
                .fold((0, 0), |(b, n), (_, s)| (b + s.len as usize, n + 1));
            if bytes + b > PACK_MAX_BYTES || slots + n > PACK_MAX_SLOTS {
                self.keep_lease(lease).await?;
                if !self
                    .compact_group(std::mem::take(&mut group), opts, lease, &mut summary)
                    .await?
                {
                    return Ok(summary);
                }
                progress(&summary);
                (bytes, slots) = (pack::NONCE_LEN, 0);
            }
            group.push((hash, m));
            bytes += b;
            slots += n;
        }
        if !group.is_empty() {
            self.keep_lease(lease).await?;
            self.compact_group(group, opts, lease, &mut summary).await?;
            progress(&summary);
        }
        if opts.dry_run {
            summary.markers_removed = old_markers.len() as u64;
        } else if !old_markers.is_empty() {
            self.keep_lease(lease).await?;
            let before = now.saturating_sub(MIN_AGE.as_millis() as u64);
            let (removed, killed) = self.prune_markers(before, &marked_live).await?;
            summary.markers_removed = removed;
            summary.copies_killed = killed;
            progress(&summary);
        }
        Ok(summary)
    }

    /// The map keys of the delete markers written before cluster time
    /// `before`.
    async fn old_markers(&self, before: u64) -> Result<HashSet<u64>, Error> {
        let mut out = HashSet::new();
        for p in 0..super::gone::MARKER_PARTITIONS {
            for (mh, item) in self.list_markers(p).await? {
                let live = item
                    .values()
                    .iter()
                    .any(|v| matches!(v, DvvsValue::Value(_)));
                if live && item_time(&item) < before {
                    out.insert(pack::map_key(&mh));
                }
            }
        }
        Ok(out)
    }

    /// Writes one new pack with the live blocks of `group`, then retires
    /// each pack of the group. Each pack's manifest is read again from a
    /// quorum first: deletes made since the listing are not copied.
    /// Returns `false` where a test asks to stop as a kill would.
    async fn compact_group(
        &self,
        group: Vec<(Hash, Manifest)>,
        opts: &CompactOptions,
        lease: Option<&Held>,
        summary: &mut CompactSummary,
    ) -> Result<bool, Error> {
        let mut b = PackBuilder::unique();
        let mut members = Vec::new();
        let mut freed = Vec::new();
        for (hash, listed) in group {
            let now = if opts.dry_run {
                listed
            } else {
                match self.read_manifest(&hash).await? {
                    // Retired, removed or unfinished meanwhile (not by
                    // another run: we hold the lease): left for next time.
                    Some(r) if r.manifest.retired.is_none() && r.manifest.sources.is_empty() => {
                        r.manifest
                    }
                    _ => continue,
                }
            };
            let bytes = match self.pack_bytes(&hash, now.storage).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    summary.skipped.push(format!("{}: {e}", pack_name(&hash)));
                    continue;
                }
            };
            let live: Vec<_> = now.live().collect();
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
            // delete is carried slot by slot, and a copy that some
            // connector saw live must stay live.
            let moved: Vec<(usize, usize)> = live
                .iter()
                .map(|(i, s)| {
                    let d = &bytes[s.offset as usize..(s.offset + s.len) as usize];
                    (*i, b.push(s.mh, s.codec, d))
                })
                .collect();
            b.sources.push(Source {
                hash,
                slots: moved.iter().map(|(i, _)| *i as u16).collect(),
            });
            freed.push(
                now.slots
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| now.is_deleted(*i))
                    .map(|(_, s)| s.len as u64)
                    .sum::<u64>(),
            );
            members.push(Member { hash, moved });
        }
        if members.is_empty() {
            return Ok(true);
        }
        let outcomes = if opts.dry_run {
            summary.written += 1;
            vec![Retirement::Done; members.len()]
        } else {
            self.keep_lease(lease).await?;
            let (new, _) = self.store_pack(b, self.conn().config.pack_storage).await?;
            summary.written += 1;
            #[cfg(feature = "integration-tests")]
            if opts.hooks.stop_after_new_pack {
                return Ok(false);
            }
            self.retire_all(&new, &members, lease).await?
        };
        for ((m, freed), outcome) in members.iter().zip(freed).zip(outcomes) {
            if outcome == Retirement::Done {
                summary.compacted += 1;
                summary.blocks_moved += m.moved.len() as u64;
                summary.bytes_freed += freed;
            }
        }
        Ok(true)
    }

    /// Finishes a compaction whose new pack still lists its sources: each
    /// source not retired yet is retired, and the deletes made to each are
    /// carried to the new pack. `false` if there was nothing to finish.
    async fn finish(&self, new: &Hash, lease: Option<&Held>) -> Result<bool, Error> {
        let Some(read) = self.read_manifest(new).await? else {
            return Ok(false);
        };
        if read.manifest.retired.is_some() || read.manifest.sources.is_empty() {
            return Ok(false);
        }
        let members: Vec<Member> = read
            .manifest
            .source_slots()
            .into_iter()
            .map(|(hash, moved)| Member { hash, moved })
            .collect();
        self.retire_all(new, &members, lease).await?;
        Ok(true)
    }

    /// Retires every member in favour of `new`, then clears `new`'s
    /// sources. A member that fails does not stop the others; the sources
    /// stay listed then, for the next run, and the first error is returned.
    async fn retire_all(
        &self,
        new: &Hash,
        members: &[Member],
        lease: Option<&Held>,
    ) -> Result<Vec<Retirement>, Error> {
        let mut outcomes = Vec::with_capacity(members.len());
        let mut failed = None;
        for m in members {
            // A run that lost its lease stops before it retires anything.
            self.keep_lease(lease).await?;
            match self.retire(m, new).await {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    tracing::warn!(pack = %pack_name(&m.hash), "not retired: {e}");
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.update_manifest(new, |m| {
            let pending = !m.sources.is_empty();
            m.sources.clear();
            pending
        })
        .await?;
        Ok(outcomes)
    }

    /// Retires a compacted pack in favour of `new`, which holds copies of
    /// its live slots. Deletes of the pack's blocks made since they were
    /// copied are carried to `new` first, and those racing the retirement
    /// after (its manifest read again once the retirement is on a quorum).
    async fn retire(&self, m: &Member, new: &Hash) -> Result<Retirement, Error> {
        let all = || m.moved.iter().map(|(_, j)| *j).collect::<Vec<_>>();
        let deleted_in = |now: &Manifest| {
            m.moved
                .iter()
                .filter(|(i, _)| now.is_deleted(*i))
                .map(|(_, j)| *j)
                .collect::<Vec<_>>()
        };
        let read = match self.read_manifest(&m.hash).await? {
            // Removed since (every block deleted: a spent pack goes; a
            // retired one only after its new pack lists no sources).
            None => {
                self.delete_new_slots(new, all()).await?;
                return Ok(Retirement::Lost);
            }
            Some(read) => read,
        };
        let written = self.written_at(&m.hash, &read).await?;
        match read.manifest.retired {
            Some(r) if r.by == *new => {
                self.delete_new_slots(new, deleted_in(&read.manifest))
                    .await?;
                self.drop_marked(m, new, &read.manifest, written).await?;
                return Ok(Retirement::Already);
            }
            // Into another pack: ours are duplicates.
            Some(_) => {
                self.delete_new_slots(new, all()).await?;
                return Ok(Retirement::Lost);
            }
            None => {}
        }
        self.delete_new_slots(new, deleted_in(&read.manifest))
            .await?;
        let mut retired = read.manifest.clone();
        // `at` is for people and for maps' memory of recent retirements;
        // removal goes by the manifest item's cluster time.
        retired.retired = Some(Retired {
            by: *new,
            at: garage_util::time::now_msec(),
        });
        self.rewrite_manifest(&m.hash, read, &retired).await?;
        let p = m.hash.as_slice()[0] as usize;
        self.packs
            .note(Some(p), Change::Insert(m.hash, retired.clone()));
        if let Some(again) = self.read_manifest(&m.hash).await? {
            // Another run retired it at the same time (its lease lapsed):
            // the merge keeps one successor, the same for every reader,
            // and the other's copies go.
            if again.manifest.retired.is_some_and(|r| r.by != *new) {
                self.delete_new_slots(new, all()).await?;
                return Ok(Retirement::Lost);
            }
            self.delete_new_slots(new, deleted_in(&again.manifest))
                .await?;
        }
        self.drop_marked(m, new, &retired, written).await?;
        Ok(Retirement::Done)
    }

    /// When a member was written, on the cluster's clock: its row's write
    /// (a pack in a row), else its manifest's last write before now (later
    /// than the pack: fewer copies are found marked after it).
    async fn written_at(&self, hash: &Hash, read: &ManifestRead) -> Result<u64, Error> {
        let manifest = item_time(&read.item);
        Ok(match read.manifest.storage {
            PackStorage::Rows => self.row_time(hash).await?.unwrap_or(manifest),
            PackStorage::Blocks => manifest,
        })
    }

    /// Deletes from `new` the copies of a member's blocks whose delete
    /// marker is younger than the member (`gone.rs`): a delete that did
    /// not know the member left them, and `new`, younger than the marker,
    /// would keep them for ever. Run once the member is retired, so that a
    /// marker written later is younger than `new` too, and the pollers'
    /// rule kills the copy.
    async fn drop_marked(
        &self,
        m: &Member,
        new: &Hash,
        source: &Manifest,
        written: u64,
    ) -> Result<(), Error> {
        let copied = m
            .moved
            .iter()
            .filter_map(|(i, j)| Some((*j, source.slots.get(*i)?.mh)))
            .collect();
        let dead = self.marked_since(copied, written).await?;
        self.delete_new_slots(new, dead).await
    }

    /// Takes the namespace's compaction lease for `holder`, or fails if
    /// another run holds it (unless `force`: the other's is removed).
    ///
    /// Each run writes an item of its own, then reads every run's from a
    /// quorum: two runs taking it at once each see at least the other's
    /// item, so at least one gives up (both may). Whether a lease still
    /// holds is judged on the cluster's clock: the time the storage nodes
    /// gave each item's last write, against the time they gave ours just
    /// now. Items of runs whose lease ran out are removed.
    async fn take_lease(&self, holder: &str, force: bool) -> Result<Held, Error> {
        let partition = lease_partition(self.name());
        self.write_lease(holder, None).await?;
        let items = self.read_leases().await?;
        let busy = |until_ms| Error::CompactionRunning {
            name: self.name().to_string(),
            until_ms,
        };
        // Our write on a quorum, then a quorum read that misses it: the
        // cluster is not settled; give up rather than guess.
        let Some(own) = items.iter().find(|i| i.sort_key == holder && is_live(i)) else {
            let until = items.iter().map(item_time).max().unwrap_or(0);
            return Err(busy(until + LEASE.as_millis() as u64));
        };
        let now = item_time(own);
        let others: Vec<&K2VItem> = items
            .iter()
            .filter(|i| i.sort_key != holder && is_live(i))
            .collect();
        let held_until = others
            .iter()
            .map(|i| item_time(i))
            .filter(|&t| fresh(t, now))
            .max()
            .map(|t| t + LEASE.as_millis() as u64);
        if let (Some(until_ms), false) = (held_until, force) {
            self.tombstone_lease(&partition, own).await?;
            return Err(busy(until_ms));
        }
        // Expired (or, with `force`, broken): the run, should it still be
        // alive, finds its item gone at its next renewal and stops.
        for other in others {
            self.tombstone_lease(&partition, other).await?;
        }
        Ok(Held {
            holder: holder.to_string(),
            renewed: std::sync::Mutex::new((Instant::now(), now)),
        })
    }

    /// Renews the lease when a third of it has passed. A run whose lease
    /// was taken from it (`--break-lease`, or expired and taken) finds its
    /// item gone and stops.
    async fn keep_lease(&self, lease: Option<&Held>) -> Result<(), Error> {
        let Some(held) = lease else {
            return Ok(());
        };
        if held.renewed.lock().unwrap().0.elapsed() < LEASE / 3 {
            return Ok(());
        }
        let items = self.read_leases().await?;
        let own = items
            .iter()
            .find(|i| i.sort_key == held.holder && is_live(i));
        let Some(own) = own else {
            let now = held.cluster_now();
            let until_ms = items
                .iter()
                .filter(|i| i.sort_key != held.holder && is_live(i))
                .map(item_time)
                .max()
                .map_or(now, |t| t + LEASE.as_millis() as u64);
            return Err(Error::CompactionRunning {
                name: self.name().to_string(),
                until_ms,
            });
        };
        self.write_lease(&held.holder, Some(own)).await?;
        let (partition, key) = (lease_partition(self.name()), held.holder.clone());
        let again = self.conn().rpc_k2v_get(&partition, &key).await?;
        let renewed = again.value.as_ref().map_or(held.cluster_now(), item_time);
        *held.renewed.lock().unwrap() = (Instant::now(), renewed);
        Ok(())
    }

    /// Every run's lease item, from a quorum (tombstones included, page
    /// by page: the tombstones of a day of runs on a timer can outnumber
    /// one page, and a live lease behind them must not be missed).
    async fn read_leases(&self) -> Result<Vec<K2VItem>, Error> {
        let partition = lease_partition(self.name());
        let (mut items, mut start) = (Vec::new(), None);
        loop {
            let (page, next) = self.k2v_page(&partition, start, 1000).await?;
            items.extend(page);
            match next {
                Some(n) => start = Some(n),
                None => return Ok(items),
            }
        }
    }

    /// Writes `holder`'s lease item, over `read` if given.
    async fn write_lease(&self, holder: &str, read: Option<&K2VItem>) -> Result<(), Error> {
        let lease = Lease {
            holder: holder.to_string(),
        };
        self.conn()
            .rpc_k2v_insert(
                lease_partition(self.name()),
                holder.to_string(),
                read.map(K2VItem::causal_context),
                DvvsValue::Value(serde_json::to_vec(&lease).expect("serializable")),
            )
            .await?;
        Ok(())
    }

    /// Tombstones one run's lease item, with the context it was read with.
    async fn tombstone_lease(
        &self,
        partition: &K2VItemPartition,
        item: &K2VItem,
    ) -> Result<(), Error> {
        self.conn()
            .rpc_k2v_insert(
                partition.clone(),
                item.sort_key.clone(),
                Some(item.causal_context()),
                DvvsValue::Deleted,
            )
            .await?;
        Ok(())
    }

    /// Removes `holder`'s lease item.
    async fn release_lease(&self, holder: &str) -> Result<(), Error> {
        let partition = lease_partition(self.name());
        let read = self.conn().rpc_k2v_get(&partition, holder).await?;
        match read.value {
            Some(item) if is_live(&item) => self.tombstone_lease(&partition, &item).await,
            _ => Ok(()),
        }
    }

    /// Marks slots of a pack deleted (those not deleted yet).
    async fn delete_new_slots(&self, hash: &Hash, slots: Vec<usize>) -> Result<(), Error> {
        if slots.is_empty() {
            return Ok(());
        }
        self.update_manifest(hash, |m| {
            let fresh: Vec<usize> = slots
                .iter()
                .copied()
                .filter(|i| !m.is_deleted(*i))
                .collect();
            for &i in &fresh {
                m.delete(i);
            }
            !fresh.is_empty()
        })
        .await
    }

    /// Reads a pack's manifest from a quorum, lets `change` edit it, and if
    /// it says it changed something, writes it back with the read's causal
    /// context and tells the map. Nothing if the manifest is gone.
    async fn update_manifest(
        &self,
        hash: &Hash,
        change: impl FnOnce(&mut Manifest) -> bool,
    ) -> Result<(), Error> {
        let Some(read) = self.read_manifest(hash).await? else {
            return Ok(());
        };
        let mut m = read.manifest.clone();
        if !change(&mut m) {
            return Ok(());
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
                if !is_live(&item) {
                    continue; // a tombstone
                }
                // When a storage node took the row, on its clock: the
                // writer's clock (in the pack's nonce) may be hours off,
                // and so may ours.
                let written = item_time(&item);
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
