//! Delete markers: how a delete reaches copies of a block that the
//! deleting connector does not know.
//!
//! A packed block has no index entry: which packs hold it is known only
//! from the manifests, which each connector follows with some lag. So a
//! block packed by connector A can be packed again by connector B before
//! B's map knows A's pack (B answers "absent" within the lag, and a put of
//! an absent block writes it). Two copies, in two packs; a later delete
//! through A reaches only the copy A knows, and the other would serve the
//! block again for ever.
//!
//! So every delete that may concern a small block also writes a *marker*:
//! a K2V item keyed by the block, in the namespace's partition
//! `gd:<first byte of the digest>`, whose value says nothing; what counts
//! is when it was written, on the cluster's clock (the K2V timestamp the
//! storage node gave it, as for compaction's ages). A copy in a pack
//! written before the marker is dead; one written after it is a later put
//! and lives. Whoever knows a pack holding the block kills its older
//! copies:
//!
//! - every daemon's poller lists the marker partitions whose counters
//!   moved, and checks each new marker against its map; a manifest
//!   partition it lists later is checked against the markers it knows
//!   (a pack may be learned after its marker);
//! - a put that would be acknowledged on a packed copy (the block is
//!   there already) reads the marker first: a copy older than it does not
//!   count, and a new copy is written;
//! - compaction, after retiring a pack, checks the markers of the blocks
//!   it copied from it: the new pack is younger than any marker written
//!   before, so the poller's rule would let such a copy live.
//!
//! "Written before" is decided on the quorum: the manifest's last write
//! when it is older than the marker, else the pack's row, which is written
//! once, just before the manifest (a pack in a Garage block has no row:
//! its copy is judged by its manifest only, and kept when that was
//! rewritten after the marker). A put and a delete that overlap may go
//! either way; every connector decides the same way for the same pair.
//!
//! A marker is kept until compaction finds it older than an hour of the
//! cluster's time and no pack written before it still holds the block
//! live (every such pack is listed by then).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::Hash;
use multihash::Multihash;

use super::compact::item_time;
use super::pack::{self, map_key, PackStorage};
use super::packed::Change;
use super::{Error, Namespace};
use crate::cid as cidutil;

/// Marker partitions per namespace (by the block's first digest byte).
pub(crate) const MARKER_PARTITIONS: usize = 256;

/// The prefix of marker partition keys.
const PREFIX: &str = "gd:";

/// A marker's value: its format. Only its write time matters.
const MARKER: [u8; 1] = [1];

/// Markers read per listing request (each is a key and a byte).
const PAGE: usize = 1000;

/// Suspects checked per step of the poller.
const SUSPECTS_PER_STEP: usize = 256;

/// Quorum checks run at once.
const CONCURRENCY: usize = 16;

/// The key of marker partition `i`.
pub(crate) fn partition_name(i: usize) -> String {
    format!("{PREFIX}{i:02x}")
}

/// The marker partition a counter's partition key names, if it is one.
pub(crate) fn parse_partition(key: &str) -> Option<usize> {
    let hex = key.strip_prefix(PREFIX)?;
    (hex.len() == 2)
        .then(|| usize::from_str_radix(hex, 16).ok())
        .flatten()
}

fn partition_of(mh: &Multihash<64>) -> usize {
    mh.digest().first().copied().unwrap_or(0) as usize
}

/// The newest marker time of an item, if it holds a marker (not only a
/// tombstone left by compaction's cleanup).
fn marker_time(item: &K2VItem) -> Option<u64> {
    item.values()
        .iter()
        .any(|v| matches!(v, DvvsValue::Value(_)))
        .then(|| item_time(item))
}

/// A packed copy that a marker may have killed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Suspect {
    pub(super) pack: Hash,
    pub(super) mh: Multihash<64>,
    /// The marker's time.
    pub(super) at: u64,
}

/// One marker partition as last listed: the counter signature it was
/// listed under, and the newest marker time of each block, by map key.
type Listed = (Option<Vec<u8>>, HashMap<u64, u64>);

/// What a connector knows of the markers.
pub(crate) struct Markers {
    /// Per partition.
    parts: Vec<Listed>,
    /// Copies to check.
    suspects: Vec<Suspect>,
    /// Copies checked (killed or found younger than the marker).
    decided: HashSet<Suspect>,
    /// Copies killed by this connector.
    killed: u64,
}

impl Default for Markers {
    fn default() -> Self {
        Self {
            parts: (0..MARKER_PARTITIONS)
                .map(|_| (None, HashMap::new()))
                .collect(),
            suspects: Vec::new(),
            decided: HashSet::new(),
            killed: 0,
        }
    }
}

impl Markers {
    /// The newest marker known for a block.
    fn time_of(&self, mh: &Multihash<64>) -> Option<u64> {
        self.parts[partition_of(mh)].1.get(&map_key(mh)).copied()
    }

    /// A pack just listed: its live blocks with a marker are suspects.
    pub(super) fn check_listed<'a>(
        &mut self,
        pack: Hash,
        live: impl Iterator<Item = &'a Multihash<64>>,
    ) {
        for mh in live {
            if let Some(at) = self.time_of(mh) {
                let s = Suspect { pack, mh: *mh, at };
                if !self.decided.contains(&s) {
                    self.suspects.push(s);
                }
            }
        }
    }

    /// Markers known and copies killed, for the stats.
    pub(super) fn counts(&self) -> (u64, u64) {
        let known = self.parts.iter().map(|(_, m)| m.len() as u64).sum();
        (known, self.killed)
    }
}

impl Namespace {
    fn marker_partition(&self, p: usize) -> K2VItemPartition {
        K2VItemPartition {
            bucket_id: self.id(),
            partition_key: partition_name(p),
        }
    }

    /// Writes a delete marker for a block (blindly: a marker written
    /// beside another is a sibling, and the newest time counts).
    pub(super) async fn write_marker(&self, mh: &Multihash<64>) -> Result<(), Error> {
        self.conn()
            .rpc_k2v_insert(
                self.marker_partition(partition_of(mh)),
                cidutil::dskey(mh),
                None,
                DvvsValue::Value(MARKER.to_vec()),
            )
            .await?;
        Ok(())
    }

    /// The time of a block's newest marker, read from a quorum.
    pub(super) async fn read_marker(&self, mh: &Multihash<64>) -> Result<Option<u64>, Error> {
        let read = self
            .conn()
            .rpc_k2v_get(
                &self.marker_partition(partition_of(mh)),
                &cidutil::dskey(mh),
            )
            .await?;
        Ok(read.value.as_ref().and_then(marker_time))
    }

    /// The markers of partition `p` with their items (for their times and
    /// causal contexts).
    pub(super) async fn list_markers(
        &self,
        p: usize,
    ) -> Result<Vec<(Multihash<64>, K2VItem)>, Error> {
        let partition = self.marker_partition(p);
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.k2v_page(&partition, start.take(), PAGE).await?;
            for item in page {
                let mh = cidutil::from_dskey(&item.sort_key).map_err(|e| Error::BadIndexEntry {
                    key: format!("{}/{}", partition.partition_key, item.sort_key),
                    reason: e.to_string(),
                })?;
                out.push((mh, item));
            }
            match next {
                Some(n) => start = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// When a pack was written, on the cluster's clock, as far as it
    /// matters against time `t`: whether it was written before `t`. The
    /// manifest's last write answers when it is older; else the pack's row
    /// (written once, just before the manifest). `false` when neither can
    /// tell (no row: a pack in a Garage block, or one removed).
    pub(super) async fn written_before(
        &self,
        hash: &Hash,
        manifest: &K2VItem,
        storage: PackStorage,
        t: u64,
    ) -> Result<bool, Error> {
        if item_time(manifest) < t {
            return Ok(true);
        }
        Ok(match storage {
            PackStorage::Rows => self.row_time(hash).await?.is_some_and(|w| w < t),
            PackStorage::Blocks => false,
        })
    }

    /// The cluster time a pack's row was written, if it is there.
    pub(super) async fn row_time(&self, hash: &Hash) -> Result<Option<u64>, Error> {
        let read = self
            .conn()
            .rpc_k2v_get(&pack::partition(self.id(), hash), &pack::row_key(hash))
            .await?;
        Ok(read.value.as_ref().and_then(marker_time))
    }

    /// Deletes a block's copy in `pack` (or in the pack that replaced it)
    /// if that copy was written before the marker at `at`. Returns whether
    /// it killed one.
    async fn kill_if_older(&self, s: &Suspect) -> Result<bool, Error> {
        let Some((at, read)) = self.read_current(&s.pack).await? else {
            return Ok(false);
        };
        let m = &read.manifest;
        let hits: Vec<usize> = m
            .live()
            .filter(|(_, slot)| slot.mh == s.mh)
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty()
            || !self
                .written_before(&at, &read.item, m.storage, s.at)
                .await?
        {
            return Ok(false);
        }
        let mut m = m.clone();
        for i in hits {
            m.delete(i);
        }
        self.rewrite_manifest(&at, read, &m).await?;
        self.packs
            .note(Some(at.as_slice()[0] as usize), Change::Insert(at, m));
        self.store.cache.remove(self.id(), &s.mh);
        Ok(true)
    }

    /// Starts a step of [`Self::follow_markers`] in the background, unless
    /// one is running (the next poll's counters are then for the next).
    pub(super) fn follow_markers_beside(&self, counters: BTreeMap<usize, Vec<u8>>) {
        if self.packs.following_markers.swap(true, Ordering::AcqRel) {
            return;
        }
        let ns = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ns.follow_markers(&counters).await {
                tracing::warn!(cause = %e, "delete markers not followed; retrying");
            }
            ns.packs.following_markers.store(false, Ordering::Release);
        });
    }

    /// One step of the poller: lists the marker partitions whose counters
    /// changed, takes each new marker's suspects from the map, then checks
    /// every suspect (those the map's listings found too). A suspect that
    /// could not be checked is kept for the next step.
    pub(super) async fn follow_markers(
        &self,
        counters: &BTreeMap<usize, Vec<u8>>,
    ) -> Result<(), Error> {
        let changed: Vec<usize> = {
            let g = self.packs.markers.lock().unwrap();
            (0..MARKER_PARTITIONS)
                .filter(|p| g.parts[*p].0.as_ref() != counters.get(p))
                .collect()
        };
        let mut first_error = None;
        let mut listings = futures::stream::iter(changed)
            .map(|p| async move { (p, self.list_markers(p).await) })
            .buffer_unordered(CONCURRENCY);
        while let Some((p, listed)) = listings.next().await {
            let listed = match listed {
                Ok(l) => l,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let times: HashMap<u64, u64> = listed
                .iter()
                .filter_map(|(mh, item)| Some((map_key(mh), marker_time(item)?)))
                .collect();
            let mut g = self.packs.markers.lock().unwrap();
            for (mh, _) in &listed {
                let key = map_key(mh);
                let Some(&at) = times.get(&key) else { continue };
                if g.parts[p].1.get(&key) == Some(&at) {
                    continue; // seen already
                }
                for pack in self.packs.packs_holding(mh) {
                    g.suspects.push(Suspect { pack, mh: *mh, at });
                }
            }
            g.decided
                .retain(|s| partition_of(&s.mh) != p || times.get(&map_key(&s.mh)) == Some(&s.at));
            g.parts[p] = (counters.get(&p).cloned(), times);
        }
        // A bounded share per step, so that a burst of markers does not
        // hold the poller (and the freshness of its answers) back.
        let suspects: Vec<Suspect> = {
            let mut g = self.packs.markers.lock().unwrap();
            let mut seen = HashSet::new();
            let all = std::mem::take(&mut g.suspects);
            let mut all: Vec<Suspect> = all
                .into_iter()
                .filter(|s| seen.insert(s.clone()) && !g.decided.contains(s))
                .collect();
            g.suspects = all.split_off(all.len().min(SUSPECTS_PER_STEP));
            all
        };
        let results: Vec<(Suspect, Result<bool, Error>)> = futures::stream::iter(suspects)
            .map(|s| async move {
                let r = self.kill_if_older(&s).await;
                (s, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut g = self.packs.markers.lock().unwrap();
        for (s, r) in results {
            match r {
                Ok(killed) => {
                    if killed {
                        g.killed += 1;
                        tracing::info!(pack = %super::packed::pack_name(&s.pack), mh = %cidutil::dskey(&s.mh),
                            "a packed copy older than its block's delete marker was deleted");
                    }
                    g.decided.insert(s);
                }
                Err(e) => {
                    g.suspects.push(s);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Of the blocks compaction copied from a pack written at `written`
    /// (slot in the new pack, block), those with a marker written after:
    /// their copies in the new pack must go.
    pub(super) async fn marked_since(
        &self,
        copied: Vec<(usize, Multihash<64>)>,
        written: u64,
    ) -> Result<Vec<usize>, Error> {
        futures::stream::iter(copied)
            .map(|(j, mh)| async move {
                Ok::<_, Error>(
                    self.read_marker(&mh)
                        .await?
                        .is_some_and(|t| t > written)
                        .then_some(j),
                )
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|j| async move { Ok(j) })
            .try_collect()
            .await
    }

    /// Removes the markers written before cluster time `before`, once
    /// every copy of their block in a pack written before them is killed
    /// (`live`: the packs holding each block live, by map key, from a
    /// listing begun after `before`: every pack older than such a marker
    /// is in it). Returns the markers removed and the copies killed.
    pub(super) async fn prune_markers(
        &self,
        before: u64,
        live: &HashMap<u64, Vec<Hash>>,
    ) -> Result<(u64, u64), Error> {
        let (mut removed, mut killed) = (0, 0);
        for p in 0..MARKER_PARTITIONS {
            for (mh, item) in self.list_markers(p).await? {
                let Some(at) = marker_time(&item) else {
                    continue;
                };
                if at >= before {
                    continue;
                }
                for pack in live.get(&map_key(&mh)).into_iter().flatten() {
                    let s = Suspect {
                        pack: *pack,
                        mh,
                        at,
                    };
                    killed += u64::from(self.kill_if_older(&s).await?);
                }
                self.remove_marker(p, &item).await?;
                removed += 1;
            }
        }
        Ok((removed, killed))
    }

    /// Removes every delete marker of the namespace: for its deletion,
    /// once no pack is left. Returns how many.
    pub(super) async fn purge_markers(&self) -> Result<u64, Error> {
        let mut removed = 0;
        for p in 0..MARKER_PARTITIONS {
            for (_, item) in self.list_markers(p).await? {
                if marker_time(&item).is_none() {
                    continue;
                }
                self.remove_marker(p, &item).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Tombstones a marker with the causal context of the read that found
    /// it: a marker written since stays (a sibling of the tombstone).
    async fn remove_marker(&self, p: usize, item: &K2VItem) -> Result<(), Error> {
        self.conn()
            .rpc_k2v_insert(
                self.marker_partition(p),
                item.sort_key.clone(),
                Some(item.causal_context()),
                DvvsValue::Deleted,
            )
            .await?;
        Ok(())
    }
}
