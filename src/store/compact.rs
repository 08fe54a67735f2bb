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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::TryStreamExt;
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::{blake2sum, Hash};
use serde::{Deserialize, Serialize};

use super::pack::{self, Manifest, PackBuilder, Retired, Source, PACK_MAX_BYTES, PACK_MAX_SLOTS};
use super::packed::{is_spent, pack_name, Change, PACK_PARTITIONS};
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
    renewed: std::sync::Mutex<Instant>,
}

/// The value of a compaction lease.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

/// The K2V item of a namespace's compaction lease (in a bucket of its own:
/// none of the namespace's partitions, which the counters count).
fn lease_item(namespace: &str) -> (K2VItemPartition, String) {
    (
        K2VItemPartition {
            bucket_id: blake2sum(b"garage-ipfs/compaction-lease/v1"),
            partition_key: namespace.to_string(),
        },
        "lease".to_string(),
    )
}

/// The leases an item holds (concurrent takers leave several).
fn leases(item: &K2VItem) -> impl Iterator<Item = Lease> + '_ {
    item.values().into_iter().filter_map(|v| match v {
        DvvsValue::Value(b) => serde_json::from_slice::<Lease>(b).ok(),
        DvvsValue::Deleted => None,
    })
}

/// The latest time until which a lease other than `holder`'s holds.
fn held_by_other(item: &K2VItem, holder: &str, now: u64) -> Option<u64> {
    leases(item)
        .filter(|l| l.holder != holder && l.until_ms > now)
        .map(|l| l.until_ms)
        .max()
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
        self.take_lease(&holder, opts.break_lease).await?;
        let lease = Held {
            holder: holder.clone(),
            renewed: std::sync::Mutex::new(Instant::now()),
        };
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
        let now = garage_util::time::now_msec();
        let min_age = opts.min_age_ms();
        let expired = |at: u64| at.saturating_add(min_age) <= now;
        let counters = super::filter::pack_counters(self).await?;
        let (mut pending, mut retired_out, mut spent) = (Vec::new(), Vec::new(), Vec::new());
        let mut candidates = Vec::new();
        let mut in_pending = HashSet::new();
        for p in 0..PACK_PARTITIONS {
            self.keep_lease(lease).await?;
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
                    Some(r) if expired(r.at) => retired_out.push(hash),
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
            let gone = |m: &Manifest| m.retired.is_some_and(|r| expired(r.at));
            if opts.dry_run || self.remove_pack(&hash, gone).await? {
                summary.retired_removed += 1;
            }
        }
        for hash in spent {
            if opts.dry_run || self.remove_pack(&hash, is_spent).await? {
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
        Ok(summary)
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
        match read.manifest.retired {
            Some(r) if r.by == *new => {
                self.delete_new_slots(new, deleted_in(&read.manifest))
                    .await?;
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
        retired.retired = Some(Retired {
            by: *new,
            at: garage_util::time::now_msec(),
        });
        self.rewrite_manifest(&m.hash, read, &retired).await?;
        let p = m.hash.as_slice()[0] as usize;
        self.packs.note(Some(p), Change::Insert(m.hash, retired));
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
        Ok(Retirement::Done)
    }

    /// Takes the namespace's compaction lease for `holder`, or fails if
    /// another holds it (unless `force`: the value read is replaced). Two
    /// runs taking it at once both write, then read it back from a quorum:
    /// at least one sees the other and gives up.
    async fn take_lease(&self, holder: &str, force: bool) -> Result<(), Error> {
        let (partition, key) = lease_item(self.name());
        let busy = |until_ms| Error::CompactionRunning {
            name: self.name().to_string(),
            until_ms,
        };
        let read = self.conn().rpc_k2v_get(&partition, &key).await?;
        let now = garage_util::time::now_msec();
        if let Some(until) = read
            .value
            .as_ref()
            .and_then(|i| held_by_other(i, holder, now))
            .filter(|_| !force)
        {
            return Err(busy(until));
        }
        self.write_lease(read.value, holder, now).await?;
        let again = self.conn().rpc_k2v_get(&partition, &key).await?;
        match again
            .value
            .as_ref()
            .and_then(|i| held_by_other(i, holder, now))
        {
            Some(until) => Err(busy(until)),
            None => Ok(()),
        }
    }

    /// Renews the lease when a third of it has passed. A run whose lease
    /// was taken from it (`--break-lease`, or expired) stops.
    async fn keep_lease(&self, lease: Option<&Held>) -> Result<(), Error> {
        let Some(held) = lease else {
            return Ok(());
        };
        if held.renewed.lock().unwrap().elapsed() < LEASE / 3 {
            return Ok(());
        }
        let (partition, key) = lease_item(self.name());
        let read = self.conn().rpc_k2v_get(&partition, &key).await?;
        let now = garage_util::time::now_msec();
        let ours = read
            .value
            .as_ref()
            .is_some_and(|i| leases(i).any(|l| l.holder == held.holder));
        // Our value beside another's is what two runs starting at once
        // leave: the other saw ours and gave up (of two such writers at
        // least one sees the other, and we did not). Ours gone: taken.
        if !ours {
            let until_ms = read
                .value
                .as_ref()
                .and_then(|i| held_by_other(i, &held.holder, now))
                .unwrap_or(now);
            return Err(Error::CompactionRunning {
                name: self.name().to_string(),
                until_ms,
            });
        }
        self.write_lease(read.value, &held.holder, now).await?;
        *held.renewed.lock().unwrap() = Instant::now();
        Ok(())
    }

    /// Writes `holder`'s lease, from `now` on, over the values of `read`.
    async fn write_lease(
        &self,
        read: Option<K2VItem>,
        holder: &str,
        now: u64,
    ) -> Result<(), Error> {
        let (partition, key) = lease_item(self.name());
        let lease = Lease {
            holder: holder.to_string(),
            until_ms: now + LEASE.as_millis() as u64,
        };
        self.conn()
            .rpc_k2v_insert(
                partition,
                key,
                read.map(|i| i.causal_context()),
                DvvsValue::Value(serde_json::to_vec(&lease).expect("serializable")),
            )
            .await?;
        Ok(())
    }

    /// Removes `holder`'s lease (left alone if another's is beside it).
    async fn release_lease(&self, holder: &str) -> Result<(), Error> {
        let (partition, key) = lease_item(self.name());
        let read = self.conn().rpc_k2v_get(&partition, &key).await?;
        let Some(item) = read.value else {
            return Ok(());
        };
        if held_by_other(&item, holder, garage_util::time::now_msec()).is_some() {
            return Ok(());
        }
        self.conn()
            .rpc_k2v_insert(
                partition,
                key,
                Some(item.causal_context()),
                DvvsValue::Deleted,
            )
            .await?;
        Ok(())
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
