//! Answering "don't have it" from memory.
//!
//! A public IPFS node asks its store, all day, for blocks it does not have.
//! Each namespace of a daemon keeps an in-memory filter of the multihashes
//! its index holds, so that `has`, `get_size` and `get` of an absent block
//! cost no cluster request at all.
//!
//! - One quotient filter (`qfilter`, ~2.5 bytes per block at 0.01 % false
//!   positives) per index shard, 256 per namespace, so a shard can be
//!   rebuilt alone.
//! - The filter answers only once the first complete listing is done
//!   (kubo lost blocks by switching its Bloom filter on earlier); until
//!   then every lookup goes to the index.
//! - Our own puts enter the filter as soon as they are acknowledged.
//! - Everything else (puts and deletes by other connectors) is caught by
//!   polling the K2V counters storage nodes keep per shard, once per
//!   [`POLL_INTERVAL`]: a shard whose entry count moved by more than our
//!   own puts and deletes explain is listed again and its filter replaced.
//!   A block another connector wrote can thus be reported absent for at
//!   most the poll interval plus the time Garage takes to propagate its
//!   counters (measured: see the tests). Changes that cancel out in the
//!   count (another connector deleting one block and adding another in the
//!   same shard between two polls) are caught by the rolling refresh, which
//!   lists every shard again once per [`REFRESH_INTERVAL`]: that is the
//!   worst-case delay.
//! - Our own writes thus cost no listing: under a steady put load the
//!   filter lists nothing but the rolling refresh.
//! - A deleted block stays "maybe present" until its shard is rebuilt,
//!   which only costs an index read: the filter never turns a stored block
//!   into an absent one.
//! - Each rebuild gives its shard a new epoch, which retires what the
//!   block cache (`cache.rs`) holds for that shard.
//! - The filter is saved in the connector's state directory every
//!   [`SNAPSHOT_INTERVAL`] when it changed (`snapshot.rs`), each shard with
//!   the counters it is known to cover exactly. After a restart, one
//!   counter read decides: a shard whose counters still match is restored
//!   and answers at once; the others answer "maybe" (the index decides)
//!   until listed. So absent lookups cost no cluster request from the
//!   first counter read on, whatever the namespace's size. Changes that
//!   cancel out in the counts while the daemon was down are caught by the
//!   rolling refresh, as they are while it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use multihash::Multihash;
use serde::Serialize;

use super::index::{self, INDEX_SHARDS};
use super::packed::{PackCounted, PACK_PARTITIONS};
use super::snapshot::{self, SavedPartition, SavedShard, Snapshot};
use super::{Error, GarageStore, Namespace};

/// How often counters are polled for changes.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long after its last complete poll began a filter (and the pack
/// map beside it) still answers from memory. Past it (a counter read that
/// fails, a shard or partition that cannot be listed, a poll that stalls)
/// every lookup goes to the cluster: "maybe", never a stale "absent" or
/// "present". With Garage's counter propagation (under a second, measured)
/// this bounds how long another connector's write or delete can go unseen
/// here (docs/NEMESIS.md, "The settle time").
pub(crate) const FRESHNESS: Duration = Duration::from_millis(1000);

/// Every shard is listed again at least this often.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// How often the filter is saved (when it changed).
pub(crate) const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);

/// Target false-positive rate. Each false positive costs one index read,
/// so at 1 % a node flooded with absent CIDs still sent one cluster
/// request per hundred; at 0.01 % it is one per ten thousand, for about one
/// more byte per block (7 more remainder bits per slot).
const FP_RATE: f64 = 0.0001;

type Qf = qfilter::Filter;

/// The filter's counters.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct FilterStats {
    /// Lookups answered "absent" from memory.
    pub hits: u64,
    /// Lookups the filter let through that the index then answered "absent".
    pub false_positives: u64,
    /// Lookups made before the filter was ready (all went to the index).
    pub not_ready: u64,
    /// Shard rebuilds after counter changes our own writes do not explain.
    pub rebuilds: u64,
    /// Shard listings of the rolling refresh.
    pub refreshes: u64,
    /// Counter polls done (after the first listing), whatever they found.
    pub polls: u64,
    /// Lookups sent to the cluster because the last complete poll was
    /// older than the freshness bound (a poll failing or stalling).
    pub stale: u64,
    /// Multihashes in the filter.
    pub entries: u64,
    /// Bytes the filter uses.
    pub memory_bytes: u64,
    /// Whether the filter answers.
    pub ready: bool,
    /// Seconds from start to ready: the first complete listing, or the
    /// restore from a snapshot.
    pub build_seconds: Option<f64>,
    /// Shards restored from the snapshot at start (the others were listed).
    pub restored_shards: u64,
    /// Shards that answer "maybe" for now (not restored, not listed yet,
    /// or overflowing until relisted): lookups in them go to the index.
    pub maybe_shards: u64,
    /// Snapshots written.
    pub snapshots: u64,
}

struct Shard {
    filter: Qf,
    /// Counter values seen when this shard was listed.
    seen: Option<Vec<u8>>,
    /// Our puts while the shard is being listed again.
    pending: Option<Vec<Vec<u8>>>,
    /// The filter was full when a put came: the shard answers "maybe"
    /// until its rebuild (which that put's counter change triggers).
    overflow: bool,
    /// The shard's entry count when it was listed.
    seen_entries: Option<i64>,
    /// The bytes of its values then.
    seen_bytes: Option<i64>,
    /// Our writes since it was listed: to its entries, and to its bytes.
    /// A change of the counters must be explained in both (entries alone
    /// let another connector's put and delete in the shard cancel out).
    ours: OwnWrites,
    ours_bytes: OwnWrites,
    /// Its last listing found fewer entries than the counters it was
    /// listed under count: Garage counts a write as soon as one node has
    /// it (the largest of the nodes' counts), and a quorum read may not
    /// see it yet. Listed again at the next change of the counters, which
    /// the other nodes' catching up makes.
    short: bool,
    /// Bumped by each rebuild (the cache's validity mark).
    epoch: u32,
    /// When it was last listed.
    listed_at: Instant,
}

/// The filter of one namespace.
pub(crate) struct NsFilter {
    shards: RwLock<Vec<Shard>>,
    ready: AtomicBool,
    hits: AtomicU64,
    false_positives: AtomicU64,
    not_ready: AtomicU64,
    rebuilds: AtomicU64,
    refreshes: AtomicU64,
    polls: AtomicU64,
    restored: AtomicU64,
    snapshots: AtomicU64,
    build_time: std::sync::Mutex<Option<Duration>>,
    /// When the last poll that completed without an error began (the
    /// counters it read are reflected in the filter and the map), in
    /// nanoseconds since `origin` plus one (0: never). An atomic, not a
    /// lock: every lookup reads it.
    synced: AtomicU64,
    origin: Instant,
    /// Lookups turned to the cluster because the last complete poll was
    /// older than [`FRESHNESS`].
    stale: AtomicU64,
    /// The namespace's id (its snapshot names it).
    ns_id: [u8; 32],
    /// Where the snapshot lives (`None`: not saved).
    snapshot_path: Option<std::path::PathBuf>,
    /// The checksum part of the last snapshot written or read, to skip
    /// writing an unchanged one.
    last_snapshot: std::sync::Mutex<Vec<u8>>,
}

fn new_filter(n: u64) -> Qf {
    // An eighth of headroom (the filter rounds its slots up to a power of
    // two, which often adds more): a shard that fills up answers "maybe"
    // until the poller rebuilds it at its new size, a second later.
    Qf::new((n + n / 8).max(64), FP_RATE).expect("valid filter parameters")
}

fn shard_of(mh: &Multihash<64>) -> usize {
    mh.digest().first().copied().unwrap_or(0) as usize
}

impl NsFilter {
    /// An empty filter, not ready.
    fn new(ns_id: [u8; 32], snapshot_path: Option<std::path::PathBuf>) -> Self {
        Self {
            shards: RwLock::new(
                (0..INDEX_SHARDS)
                    .map(|_| Shard {
                        filter: new_filter(0),
                        seen: None,
                        pending: None,
                        overflow: false,
                        seen_entries: None,
                        seen_bytes: None,
                        ours: OwnWrites::default(),
                        ours_bytes: OwnWrites::default(),
                        short: false,
                        epoch: 0,
                        listed_at: Instant::now(),
                    })
                    .collect(),
            ),
            ready: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            false_positives: AtomicU64::new(0),
            not_ready: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            build_time: Default::default(),
            synced: AtomicU64::new(0),
            // An hour back, so that a poll's start is never before it
            // (one that were would read as stale: safe).
            origin: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
            stale: AtomicU64::new(0),
            ns_id,
            snapshot_path,
            last_snapshot: Default::default(),
        }
    }

    /// Whether the filter was built (or restored).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the filter and the pack map may answer from memory now:
    /// built, and followed to the counters of a poll that began less than
    /// [`FRESHNESS`] ago.
    pub(crate) fn answers(&self) -> bool {
        if !self.is_ready() {
            return false;
        }
        let synced = self.synced.load(Ordering::Acquire);
        let fresh = synced != 0
            && (self.origin.elapsed().as_nanos() as u64).saturating_sub(synced - 1)
                < FRESHNESS.as_nanos() as u64;
        if !fresh {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    /// A poll that began at `at` completed: what the counters showed then
    /// is in the filter and the map.
    fn mark_synced(&self, at: Instant) {
        let since = at.saturating_duration_since(self.origin).as_nanos() as u64;
        self.synced.fetch_max(since + 1, Ordering::AcqRel);
    }

    /// `None` while the filter does not answer (not built, or not followed
    /// recently enough); else whether the multihash may be present
    /// (`false`: surely absent) and its shard's epoch, under which cached
    /// data is valid. Counts nothing (puts use it).
    pub(crate) fn peek(&self, mh: &Multihash<64>) -> Option<(bool, u32)> {
        if !self.answers() {
            return None;
        }
        let shards = self.shards.read().unwrap();
        let shard = &shards[shard_of(mh)];
        let maybe = shard.overflow || shard.filter.contains(mh.to_bytes());
        Some((maybe, shard.epoch))
    }

    /// The current epoch of the multihash's shard.
    pub(crate) fn epoch(&self, mh: &Multihash<64>) -> u32 {
        self.shards.read().unwrap()[shard_of(mh)].epoch
    }

    /// A delete of ours was acknowledged (the block stays "maybe present"
    /// until its shard is listed again).
    pub(crate) fn note_delete(&self, mh: &Multihash<64>, bytes: usize) {
        let mut shards = self.shards.write().unwrap();
        let shard = &mut shards[shard_of(mh)];
        shard.ours.note(-1);
        shard.ours_bytes.note(-(bytes as i64));
    }

    /// [`peek`](Self::peek), counted: a sure "absent" is a hit.
    pub(crate) fn check(&self, mh: &Multihash<64>) -> Option<(bool, u32)> {
        let answer = self.peek(mh);
        match answer {
            None => self.not_ready.fetch_add(1, Ordering::Relaxed),
            Some((false, _)) => self.hits.fetch_add(1, Ordering::Relaxed),
            Some((true, _)) => 0,
        };
        answer
    }

    /// The index said absent after the filter said maybe.
    pub(crate) fn note_false_positive(&self) {
        self.false_positives.fetch_add(1, Ordering::Relaxed);
    }

    /// A put of ours was acknowledged: a new index entry of `bytes`.
    pub(crate) fn note_put(&self, mh: &Multihash<64>, bytes: usize) {
        self.insert(mh, Some(bytes));
    }

    /// A put of ours found the block indexed already.
    pub(crate) fn note_present(&self, mh: &Multihash<64>) {
        self.insert(mh, None);
    }

    fn insert(&self, mh: &Multihash<64>, new_entry: Option<usize>) {
        let key = mh.to_bytes();
        let mut shards = self.shards.write().unwrap();
        let shard = &mut shards[shard_of(mh)];
        if let Some(bytes) = new_entry {
            shard.ours.note(1);
            shard.ours_bytes.note(bytes as i64);
        }
        if let Some(p) = &mut shard.pending {
            p.push(key.clone());
        }
        if shard.filter.insert_duplicated(&key).is_err() {
            shard.overflow = true;
            shard.seen = None;
        }
    }

    /// The filter's counters.
    pub(crate) fn stats(&self) -> FilterStats {
        let shards = self.shards.read().unwrap();
        FilterStats {
            hits: self.hits.load(Ordering::Relaxed),
            false_positives: self.false_positives.load(Ordering::Relaxed),
            not_ready: self.not_ready.load(Ordering::Relaxed),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            entries: shards.iter().map(|s| s.filter.len()).sum(),
            memory_bytes: shards.iter().map(|s| s.filter.memory_usage() as u64).sum(),
            ready: self.ready.load(Ordering::Acquire),
            build_seconds: self.build_time.lock().unwrap().map(|d| d.as_secs_f64()),
            restored_shards: self.restored.load(Ordering::Relaxed),
            maybe_shards: shards.iter().filter(|s| s.overflow).count() as u64,
            snapshots: self.snapshots.load(Ordering::Relaxed),
        }
    }

    /// Starts the filter of a namespace: the first listing, then the
    /// polling loop, until the store or the filter is dropped.
    pub(super) fn start(store: Weak<GarageStore>, name: String) -> Arc<Self> {
        let ns_id = index::namespace_id(&name)
            .as_ref()
            .try_into()
            .expect("32-byte id");
        let snapshot_path = store
            .upgrade()
            .map(|s| snapshot::path(&s.connector().config.state_dir, &ns_id));
        let filter = Arc::new(Self::new(ns_id, snapshot_path));
        let weak = Arc::downgrade(&filter);
        tokio::spawn(async move {
            if let Err(e) = run(&store, &name, &weak).await {
                tracing::error!(ns = %name, cause = %e, "presence filter stopped; lookups go to the index");
                if let Some(f) = weak.upgrade() {
                    f.ready.store(false, Ordering::Release);
                }
            }
        });
        filter
    }

    /// Installs the saved shards whose counters still match `now`; every
    /// other shard answers "maybe" until listed. Returns which shards were
    /// restored.
    fn restore(&self, saved: Vec<SavedShard>, now: &BTreeMap<usize, Counted>) -> Vec<bool> {
        let mut restored = vec![false; INDEX_SHARDS];
        let mut shards = self.shards.write().unwrap();
        for saved in saved {
            let i = usize::from(saved.shard);
            if i >= INDEX_SHARDS || restored[i] {
                continue;
            }
            let current = now.get(&i).map(|c| &c.signature);
            if saved.seen.as_ref() != current {
                continue;
            }
            let s = &mut shards[i];
            s.filter = saved.filter;
            s.seen = saved.seen;
            s.seen_entries = saved.seen_entries;
            s.seen_bytes = saved.seen_bytes;
            s.overflow = false;
            s.listed_at = Instant::now();
            restored[i] = true;
        }
        for (i, s) in shards.iter_mut().enumerate() {
            if !restored[i] {
                s.overflow = true;
                s.seen = None;
            }
        }
        self.restored.store(
            restored.iter().filter(|r| **r).count() as u64,
            Ordering::Relaxed,
        );
        restored
    }

    /// The shards worth saving, given the counters of the last poll: a
    /// shard whose filter is known to cover exactly what some counters
    /// say, with those counters. A shard with our own writes since it was
    /// listed qualifies once they are all older than [`COUNTER_LAG`] (so
    /// counted) and explain the counters' change: then the filter covers
    /// the latest counters.
    fn saved_shards(&self, now: &BTreeMap<usize, Counted>) -> Vec<SavedShard> {
        let shards = self.shards.read().unwrap();
        shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                if s.overflow || s.pending.is_some() {
                    return None;
                }
                let (seen, seen_entries, seen_bytes) =
                    if s.ours.is_empty() && s.ours_bytes.is_empty() {
                        (s.seen.clone(), s.seen_entries, s.seen_bytes)
                    } else if s.ours.all_counted()
                        && s.ours_bytes.all_counted()
                        && !needs_rebuild(s, now.get(&i))
                    {
                        let c = now.get(&i);
                        (
                            c.map(|c| c.signature.clone()),
                            c.map(|c| c.entries),
                            c.map(|c| c.bytes),
                        )
                    } else {
                        return None;
                    };
                Some(SavedShard {
                    shard: i as u16,
                    seen,
                    seen_entries,
                    seen_bytes,
                    filter: s.filter.clone(),
                })
            })
            .collect()
    }

    /// Saves the filter if it changed since the last snapshot. Returns
    /// whether a file was written.
    /// `partitions` are the pack map's, saved beside the filter (the map
    /// must be restored with the filter: the filter does not hold packed
    /// blocks).
    async fn save(
        &self,
        now: &BTreeMap<usize, Counted>,
        partitions: Vec<SavedPartition>,
    ) -> Result<bool, Error> {
        let Some(path) = self.snapshot_path.clone() else {
            return Ok(false);
        };
        if !self.is_ready() {
            return Ok(false);
        }
        let saved = Snapshot {
            shards: self.saved_shards(now),
            partitions,
        };
        let ns_id = self.ns_id;
        let bytes = tokio::task::spawn_blocking(move || snapshot::encode(ns_id, saved))
            .await
            .map_err(|e| Error::StateDir(std::io::Error::other(e)))?;
        let sum = bytes[..40].to_vec();
        if *self.last_snapshot.lock().unwrap() == sum {
            return Ok(false);
        }
        tokio::task::spawn_blocking(move || snapshot::write(&path, &bytes))
            .await
            .map_err(|e| Error::StateDir(std::io::Error::other(e)))?
            .map_err(Error::StateDir)?;
        *self.last_snapshot.lock().unwrap() = sum;
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    async fn rebuild_shard(
        &self,
        ns: &Namespace,
        shard: usize,
        seen: Option<&Counted>,
    ) -> Result<(), Error> {
        {
            let mut shards = self.shards.write().unwrap();
            let s = &mut shards[shard];
            s.pending = Some(Vec::new());
            // Ours from now on are either in the listing or in `pending`.
            s.ours = OwnWrites::default();
            s.ours_bytes = OwnWrites::default();
        }
        // A shard that cannot be listed (an entry we cannot decode, the
        // cluster unreachable) answers "maybe" until it can: its old
        // contents would answer "absent" for what others wrote since.
        let listed: Vec<Vec<u8>> = ns.list_shard_keys(shard).await.inspect_err(|_| {
            let mut shards = self.shards.write().unwrap();
            shards[shard].pending = None;
            shards[shard].overflow = true;
            shards[shard].seen = None;
        })?;
        let mut filter = new_filter(listed.len() as u64);
        for k in &listed {
            let _ = filter.insert_duplicated(k);
        }
        let mut shards = self.shards.write().unwrap();
        let s = &mut shards[shard];
        for k in s.pending.take().unwrap_or_default() {
            let _ = filter.insert_duplicated(&k);
        }
        s.filter = filter;
        s.seen = seen.map(|c| c.signature.clone());
        s.seen_entries = seen.map(|c| c.entries);
        s.seen_bytes = seen.map(|c| c.bytes);
        s.short = seen.is_some_and(|c| c.entries > listed.len() as i64);
        s.overflow = false;
        s.epoch = s.epoch.wrapping_add(1);
        s.listed_at = Instant::now();
        Ok(())
    }
}

/// What the counters say of one shard.
#[derive(Debug, Clone)]
struct Counted {
    /// Every counter value, serialized, to spot any change.
    signature: Vec<u8>,
    /// Live entries.
    entries: i64,
    /// Bytes of their values.
    bytes: i64,
}

/// What one counter read says: the index shards' counters, and the
/// manifest partitions' (as signatures).
struct Counters {
    shards: BTreeMap<usize, Counted>,
    packs: BTreeMap<usize, PackCounted>,
    /// The delete markers' partitions, as signatures.
    markers: BTreeMap<usize, Vec<u8>>,
}

/// The counters of the manifest partitions (one counter read).
pub(crate) async fn pack_counters(ns: &Namespace) -> Result<BTreeMap<usize, PackCounted>, Error> {
    Ok(read_counters(ns).await?.packs)
}

async fn read_counters(ns: &Namespace) -> Result<Counters, Error> {
    let conn = ns.conn();
    let entries = conn.rpc_k2v_counters(ns.id()).await?;
    let layout = conn.system.cluster_layout();
    let packs = entries
        .iter()
        .filter_map(|e| {
            let p = super::packed::partition_of_counter(&e.sk)?;
            let values = e.filtered_values(&layout);
            let get = |name| values.get(name).copied().unwrap_or(0);
            Some((
                p,
                PackCounted {
                    signature: rmp_serde::to_vec(&e.values).ok()?,
                    entries: get(garage_model::k2v::item_table::ENTRIES),
                    bytes: get(garage_model::k2v::item_table::BYTES),
                },
            ))
        })
        .collect();
    let markers = entries
        .iter()
        .filter_map(|e| {
            let p = super::gone::parse_partition(&e.sk)?;
            Some((p, rmp_serde::to_vec(&e.values).ok()?))
        })
        .collect();
    let shards = entries
        .into_iter()
        .filter_map(|e| {
            if e.sk.len() != 2 {
                return None;
            }
            let shard = usize::from_str_radix(&e.sk, 16).ok()?;
            let values = e.filtered_values(&layout);
            let get = |name| values.get(name).copied().unwrap_or(0);
            Some((
                shard,
                Counted {
                    signature: rmp_serde::to_vec(&e.values).ok()?,
                    entries: get(garage_model::k2v::item_table::ENTRIES),
                    bytes: get(garage_model::k2v::item_table::BYTES),
                },
            ))
        })
        .collect();
    Ok(Counters {
        shards,
        packs,
        markers,
    })
}

/// Whether a shard must be listed again, given what the counters say now.
fn needs_rebuild(shard: &Shard, now: Option<&Counted>) -> bool {
    if shard.overflow {
        return true;
    }
    let (seen, now) = match (shard.seen.as_ref(), now) {
        (None, None) => return false,
        (Some(seen), Some(now)) if *seen == now.signature => return false,
        (Some(_), Some(now)) => (shard.seen_entries.zip(shard.seen_bytes), now),
        (None, Some(now)) => (Some((0, 0)), now),
        (Some(_), None) => return true,
    };
    let Some((entries, bytes)) = seen else {
        return true;
    };
    if shard.short {
        return true;
    }
    // A change that leaves both sums as they were is not seen here (a
    // put and a delete of the same size by others): the nodes' counters
    // change their timestamps several times per write, so a signature
    // change alone is no reason to list; the rolling refresh catches it.
    !(shard.ours.explain(now.entries - entries) && shard.ours_bytes.explain(now.bytes - bytes))
}

/// How long Garage may take to count an acknowledged index write: within
/// it, our own write may or may not show in the counters; after it, it
/// must.
pub const COUNTER_LAG: Duration = Duration::from_secs(2);

/// Our own writes to a shard (or a manifest partition) since it was
/// listed: what they should have done to one of its counters (entries, or
/// bytes).
#[derive(Debug, Default)]
pub(super) struct OwnWrites {
    /// Sum of our increments.
    up: i64,
    /// Sum of our decrements, as a magnitude.
    down: i64,
    /// Changes of the last [`COUNTER_LAG`], which may not be counted yet.
    recent: std::collections::VecDeque<(Instant, i64)>,
}

impl OwnWrites {
    pub(super) fn note(&mut self, change: i64) {
        if change > 0 {
            self.up += change;
        } else {
            self.down -= change;
        }
        self.recent.push_back((Instant::now(), change));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| t.elapsed() > COUNTER_LAG)
        {
            self.recent.pop_front();
        }
    }

    /// No write of ours since the shard was listed.
    pub(super) fn is_empty(&self) -> bool {
        self.up == 0 && self.down == 0
    }

    /// Every write of ours is old enough to be in the counters.
    pub(super) fn all_counted(&self) -> bool {
        self.recent.iter().all(|(t, _)| t.elapsed() > COUNTER_LAG)
    }

    /// Whether our writes alone explain a change of the counter: older
    /// writes must be counted by now, recent ones may or may not be.
    pub(super) fn explain(&self, delta: i64) -> bool {
        let (mut up_pending, mut down_pending) = (0, 0);
        for (t, change) in &self.recent {
            if t.elapsed() <= COUNTER_LAG {
                if *change > 0 {
                    up_pending += change;
                } else {
                    down_pending -= change;
                }
            }
        }
        let low = self.up - up_pending - self.down;
        let high = self.up - (self.down - down_pending);
        (low..=high).contains(&delta)
    }
}

/// The namespace, while its store lives.
fn namespace(store: &Weak<GarageStore>, name: &str) -> Option<Namespace> {
    store.upgrade()?.namespace_unfiltered(name).ok()
}

async fn run(store: &Weak<GarageStore>, name: &str, filter: &Weak<NsFilter>) -> Result<(), Error> {
    let started = Instant::now();
    let Some(ns) = namespace(store, name) else {
        return Ok(());
    };
    let saved = match filter
        .upgrade()
        .and_then(|f| Some((f.snapshot_path.clone()?, f.ns_id)))
    {
        Some((path, ns_id)) => tokio::task::spawn_blocking(move || snapshot::read(&path, &ns_id))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let saved = saved.map(|s| {
        ns.packs.offer_snapshot(s.partitions);
        s.shards
    });
    let counted_at = Instant::now();
    let counted = read_counters(&ns).await?;
    let before = counted.shards;
    // The pack map first: the filter does not hold packed blocks, so it
    // may answer only once the map does.
    ns.packs.build(&ns, &counted.packs).await?;
    let mut restored = vec![false; INDEX_SHARDS];
    if let (Some(saved), Some(f)) = (saved, filter.upgrade()) {
        restored = f.restore(saved, &before);
        // Restored shards answer now; the others say "maybe" until listed.
        f.mark_synced(counted_at);
        f.ready.store(true, Ordering::Release);
        *f.build_time.lock().unwrap() = Some(started.elapsed());
        tracing::info!(
            ns = %name,
            restored = f.restored.load(Ordering::Relaxed),
            of = INDEX_SHARDS,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "presence filter restored from its snapshot; listing the shards that changed"
        );
    }
    for shard in (0..INDEX_SHARDS).filter(|s| !restored[*s]) {
        let Some(f) = filter.upgrade() else {
            return Ok(());
        };
        f.rebuild_shard(&ns, shard, before.get(&shard)).await?;
        if shard % 64 == 63 {
            tracing::info!(ns = %name, shards = shard + 1, of = INDEX_SHARDS, "building presence filter");
        }
    }
    let partitions = ns.packs.saved_partitions(&counted.packs);
    drop(ns);
    if let Some(f) = filter.upgrade() {
        f.mark_synced(counted_at);
        if !f.is_ready() {
            *f.build_time.lock().unwrap() = Some(started.elapsed());
            f.ready.store(true, Ordering::Release);
        }
        let s = f.stats();
        tracing::info!(
            ns = %name,
            blocks = s.entries,
            memory_bytes = s.memory_bytes,
            seconds = started.elapsed().as_secs_f64(),
            "presence filter ready"
        );
        if let Err(e) = f.save(&before, partitions).await {
            tracing::warn!(ns = %name, cause = %e, "cannot save the presence filter");
        }
    }
    let mut saved_at = Instant::now();
    let mut pack_cursor = 0;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let (Some(f), Some(ns)) = (filter.upgrade(), namespace(store, name)) else {
            return Ok(());
        };
        let poll_began = Instant::now();
        let mut complete = true;
        let (now, packs, markers) = match read_counters(&ns).await {
            Ok(n) => (n.shards, n.packs, n.markers),
            Err(e) => {
                tracing::warn!(cause = %e, "cannot poll index counters; retrying");
                continue;
            }
        };
        let changed: Vec<(usize, bool)> = {
            let shards = f.shards.read().unwrap();
            let changed: Vec<usize> = (0..INDEX_SHARDS)
                .filter(|s| needs_rebuild(&shards[*s], now.get(s)))
                .collect();
            // The rolling refresh: the shards listed longest ago, a few per
            // poll, so that each is listed within REFRESH_INTERVAL.
            let per_poll = INDEX_SHARDS.div_ceil(polls_per_refresh());
            let mut stale: Vec<usize> = (0..INDEX_SHARDS)
                .filter(|s| {
                    !changed.contains(s)
                        && shards[*s].listed_at.elapsed() >= REFRESH_INTERVAL - POLL_INTERVAL
                })
                .collect();
            stale.sort_by_key(|s| shards[*s].listed_at);
            let changed: Vec<(usize, bool)> = changed.into_iter().map(|s| (s, true)).collect();
            changed
                .into_iter()
                .chain(stale.into_iter().take(per_poll).map(|s| (s, false)))
                .collect::<Vec<_>>()
        };
        for (shard, seen_change) in changed {
            match f.rebuild_shard(&ns, shard, now.get(&shard)).await {
                Ok(()) if seen_change => {
                    f.rebuilds.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {
                    f.refreshes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // Only a shard that moved makes the poll incomplete:
                    // a failed refresh leaves what the counters showed.
                    complete &= !seen_change;
                    tracing::warn!(shard, cause = %e, "shard rebuild failed; it answers \"maybe\" until it is listed")
                }
            }
        }
        if let Err(e) = ns.packs.follow(&ns, &packs).await {
            complete = false;
            tracing::warn!(cause = %e, "pack map update failed; lookups go to the cluster until it succeeds");
        }
        // The packs' rolling refresh, at the shards' pace.
        let per_poll = PACK_PARTITIONS.div_ceil(polls_per_refresh());
        if let Err(e) = ns
            .packs
            .refresh_some(&ns, pack_cursor, per_poll, &packs)
            .await
        {
            tracing::warn!(cause = %e, "pack map refresh failed; retrying");
        }
        pack_cursor = (pack_cursor + per_poll) % PACK_PARTITIONS;
        // Markers decide no answer of ours: they are followed beside the
        // polls (one step at a time), which they never hold back.
        ns.follow_markers_beside(markers);
        if complete {
            f.mark_synced(poll_began);
        }
        f.polls.fetch_add(1, Ordering::Relaxed);
        if saved_at.elapsed() >= SNAPSHOT_INTERVAL {
            saved_at = Instant::now();
            if let Err(e) = f.save(&now, ns.packs.saved_partitions(&packs)).await {
                tracing::warn!(ns = %name, cause = %e, "cannot save the presence filter");
            }
        }
    }
}

/// Polls in one [`REFRESH_INTERVAL`]: the rolling refresh lists a share
/// of the shards and partitions at each.
fn polls_per_refresh() -> usize {
    (REFRESH_INTERVAL.as_millis() / POLL_INTERVAL.as_millis()).max(1) as usize
}

/// What a restart spends on the snapshot of a namespace of `entries`
/// blocks, measured on a synthetic one (distinct multihashes spread over
/// the shards, each shard's filter sized as a listing sizes it, and as
/// many blocks again in packs of eight, as the benchmark's small puts make
/// them): the time to write it, the time to read it back (read, checksum,
/// decode, and the pack map rebuilt from it), and its size in bytes. For
/// namespace sizes the benchmark does not fill.
#[cfg(feature = "tools")]
pub(crate) fn snapshot_cost(
    entries: u64,
    dir: &std::path::Path,
) -> std::io::Result<(Duration, Duration, u64)> {
    let mh = |a: u8, i: u64| {
        let mut digest = [0u8; 32];
        digest[0] = a;
        digest[1..9].copy_from_slice(&i.to_le_bytes());
        Multihash::<64>::wrap(0x12, &digest).expect("32-byte digest")
    };
    let per = entries.div_ceil(INDEX_SHARDS as u64);
    let shards: Vec<SavedShard> = (0..INDEX_SHARDS)
        .map(|shard| {
            let mut filter = new_filter(per);
            for i in 0..per {
                let _ = filter.insert_duplicated(mh(shard as u8, i).to_bytes());
            }
            SavedShard {
                shard: shard as u16,
                seen: Some(vec![0; 64]),
                seen_entries: Some(per as i64),
                seen_bytes: Some(per as i64 * 48),
                filter,
            }
        })
        .collect();
    let mut map = super::pack::PackMap::default();
    for p in 0..entries.div_ceil(8) {
        let mut b = super::pack::PackBuilder::unique();
        for i in 0..8 {
            b.push(mh(0xff, p * 8 + i), 0x55, &[0u8; 1024]);
        }
        let (_, hash, manifest) = b.finish(super::PackStorage::Rows);
        map.insert(hash, &manifest);
    }
    let partitions = map
        .saved()
        .into_iter()
        .enumerate()
        .map(|(p, packs)| (p, packs.unwrap_or_default()))
        .map(|(p, packs)| SavedPartition {
            partition: p as u16,
            seen: Some(vec![0; 64]),
            seen_entries: packs.len() as i64 * 2,
            seen_bytes: 0,
            packs,
        })
        .collect();
    drop(map);
    let id = [0u8; 32];
    let path = snapshot::path(dir, &id);
    let t = Instant::now();
    let bytes = snapshot::encode(id, Snapshot { shards, partitions });
    snapshot::write(&path, &bytes)?;
    let write = t.elapsed();
    let t = Instant::now();
    let back = snapshot::read(&path, &id)
        .ok_or_else(|| std::io::Error::other("the snapshot did not read back"))?;
    let mut map = super::pack::PackMap::default();
    let mut whole = true;
    for s in &back.partitions {
        whole &= map.insert_saved(usize::from(s.partition), &s.packs);
    }
    let read = t.elapsed();
    let _ = std::fs::remove_file(&path);
    if back.shards.len() != INDEX_SHARDS || !whole || (map.len() as u64) < entries {
        return Err(std::io::Error::other("the snapshot lost shards or packs"));
    }
    Ok((write, read, bytes.len() as u64))
}

impl Namespace {
    /// Saves the namespace's presence filter in the connector's state
    /// directory now (the filter does so itself every
    /// [`SNAPSHOT_INTERVAL`] when it changed). Returns whether a snapshot
    /// was written: not without a filter, before it is ready, nor when
    /// nothing changed. Costs one counter read.
    pub async fn persist_filter(&self) -> Result<bool, Error> {
        let Some(f) = &self.filter else {
            return Ok(false);
        };
        let now = read_counters(self).await?;
        f.save(&now.shards, self.packs.saved_partitions(&now.packs))
            .await
    }

    /// Deletes the namespace's filter snapshot, so that the next store
    /// opened on this state directory builds its filter by listing (the
    /// benchmark's cold start). Returns whether there was one.
    pub fn forget_filter_snapshot(&self) -> Result<bool, Error> {
        let id: [u8; 32] = self.id().as_ref().try_into().expect("32-byte id");
        let path = snapshot::path(&self.conn().config.state_dir, &id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::StateDir(e)),
        }
    }

    /// The multihash bytes of every live entry of one index shard.
    pub(super) async fn list_shard_keys(&self, shard: usize) -> Result<Vec<Vec<u8>>, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let ns = self.clone();
        let task =
            tokio::spawn(async move { ns.list_shard(shard, &Default::default(), &tx).await });
        let keys: Vec<Vec<u8>> = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map_ok(|(mh, _)| mh.to_bytes())
            .try_collect()
            .await?;
        task.await.map_err(|e| Error::BadIndexEntry {
            key: index::shard_name(shard),
            reason: e.to_string(),
        })??;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_explain_only_what_they_can() {
        let mut w = OwnWrites::default();
        assert!(w.explain(0));
        assert!(!w.explain(1), "a foreign put");
        w.note(1);
        w.note(1);
        w.note(-1);
        // Recent: each may or may not be counted yet.
        assert!(w.explain(-1) && w.explain(0) && w.explain(1) && w.explain(2));
        assert!(!w.explain(3) && !w.explain(-2));
        // Once old enough, they must all be counted: +2 - 1.
        for r in w.recent.iter_mut() {
            r.0 -= COUNTER_LAG + Duration::from_secs(1);
        }
        assert!(w.explain(1));
        assert!(!w.explain(0), "our put plus a foreign delete");
        assert!(!w.explain(2));
    }

    fn mh(i: u32) -> Multihash<64> {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[0] = (i % 256) as u8;
        Multihash::wrap(0x12, &d).unwrap()
    }

    /// A multihash in a given shard (its first digest byte).
    fn mh_in(shard: u8, i: u32) -> Multihash<64> {
        let mut d = [0u8; 32];
        d[0] = shard;
        d[1..5].copy_from_slice(&i.to_be_bytes());
        Multihash::wrap(0x12, &d).unwrap()
    }

    #[test]
    fn answers_only_when_ready_and_never_forgets_a_put() {
        let f = NsFilter::new([0; 32], None);
        assert_eq!(f.check(&mh(1)).map(|a| a.0), None, "not ready: no answer");
        f.ready.store(true, Ordering::Release);
        f.mark_synced(Instant::now());
        // 5000 puts over 256 shards (about 20 each, within each shard's
        // first capacity): every put is remembered, and absent blocks are
        // answered absent at about the target rate (1 % false positives).
        for i in 0..5000 {
            f.note_put(&mh(i), B);
        }
        for i in 0..5000 {
            assert_eq!(f.check(&mh(i)).map(|a| a.0), Some(true), "{i} forgotten");
        }
        let absent = (5000..25_000)
            .filter(|i| f.check(&mh(*i)).map(|a| a.0) == Some(false))
            .count();
        assert!(absent >= 19_600, "only {absent} of 20000 absent answered");
        let s = f.stats();
        assert_eq!(s.hits, absent as u64);
        assert!(s.ready);

        // One shard past its capacity: it says "maybe" to everything until
        // the poller rebuilds it at its new size; the others still answer.
        for i in 0..1000 {
            f.note_put(&mh_in(7, i), B);
        }
        for i in 0..1000 {
            assert_eq!(
                f.check(&mh_in(7, i)).map(|a| a.0),
                Some(true),
                "{i} forgotten"
            );
        }
        for i in 1000..2000 {
            assert_eq!(
                f.check(&mh_in(7, i)).map(|a| a.0),
                Some(true),
                "overflowed shard said absent"
            );
        }
        let other = (1000..2000)
            .filter(|i| f.check(&mh_in(8, *i)).map(|a| a.0) == Some(false))
            .count();
        assert!(other >= 980, "shard 8 answered {other} of 1000 absent");
    }

    #[test]
    fn a_filter_not_followed_recently_answers_maybe() {
        let f = NsFilter::new([0; 32], None);
        f.ready.store(true, Ordering::Release);
        f.mark_synced(Instant::now());
        assert_eq!(f.check(&mh(1)).map(|a| a.0), Some(false));
        // The last complete poll began longer ago than the bound (polls
        // failing, or a listing that cannot finish): no answer from memory.
        let f = NsFilter::new([0; 32], None);
        f.ready.store(true, Ordering::Release);
        f.mark_synced(Instant::now() - FRESHNESS - Duration::from_millis(1));
        assert_eq!(f.check(&mh(1)).map(|a| a.0), None);
        assert!(f.stats().stale >= 1);
        // A later poll brings it back; an older one changes nothing.
        f.mark_synced(Instant::now());
        f.mark_synced(Instant::now() - FRESHNESS * 2);
        assert_eq!(f.check(&mh(1)).map(|a| a.0), Some(false));
    }

    #[test]
    fn sized_filters_stay_small_and_accurate() {
        // A rebuilt shard of 4000 entries: 8192 slots (a power of two) of 14
        // remainder bits at 0.01 % FP, about 4.1 bytes per entry; a shard
        // filled closer to its size costs half that.
        let mut filter = new_filter(4000);
        for i in 0..4000u32 {
            filter.insert_duplicated(mh(i).to_bytes()).unwrap();
        }
        let per_entry = filter.memory_usage() as f64 / 4000.0;
        assert!(per_entry <= 4.5, "{per_entry} bytes per entry");
        let fp = (10_000..110_000u32)
            .filter(|i| filter.contains(mh(*i).to_bytes()))
            .count();
        // 10 expected; 40 would be a rate four times the target.
        assert!(fp < 40, "{fp} false positives in 100000");
    }

    /// Bytes of each test entry.
    const B: usize = 40;

    /// Makes our writes to a shard old enough to be counted.
    fn age_own_writes(f: &NsFilter, shard: usize) {
        let mut shards = f.shards.write().unwrap();
        let s = &mut shards[shard];
        for r in s
            .ours
            .recent
            .iter_mut()
            .chain(s.ours_bytes.recent.iter_mut())
        {
            r.0 -= COUNTER_LAG + Duration::from_secs(1);
        }
    }

    #[test]
    fn a_shard_is_listed_again_unless_our_writes_explain_entries_and_bytes() {
        let f = NsFilter::new([0; 32], None);
        let listed = |f: &NsFilter, i: usize| {
            let mut shards = f.shards.write().unwrap();
            let s = &mut shards[i];
            s.seen = Some(vec![0xA]);
            s.seen_entries = Some(1);
            s.seen_bytes = Some(B as i64);
            s.ours = OwnWrites::default();
            s.ours_bytes = OwnWrites::default();
        };
        let moved = |f: &NsFilter, i: usize, now: Counted| {
            needs_rebuild(&f.shards.read().unwrap()[i], Some(&now))
        };
        let changed = |entries: i64, bytes: i64| Counted {
            signature: vec![0xB],
            entries,
            bytes,
        };
        // Another connector's put and delete cancel in the entries, not in
        // the bytes.
        listed(&f, 1);
        assert!(moved(&f, 1, changed(1, B as i64 + 9)));
        // A signature change alone (the nodes' counters catching up with
        // one another) is not a reason to list...
        assert!(!moved(&f, 1, changed(1, B as i64)));
        // ...unless the listing found fewer entries than were counted (a
        // write counted on one node, not yet on the quorum read).
        f.shards.write().unwrap()[1].short = true;
        assert!(moved(&f, 1, changed(1, B as i64)));
        assert!(!needs_rebuild(
            &f.shards.read().unwrap()[1],
            Some(&counted(0xA, 1))
        ));
        // Our put, counted; and another connector's put and delete of
        // blocks of other sizes: the entries say only ours, the bytes not.
        listed(&f, 2);
        f.note_put(&mh_in(2, 1), B);
        age_own_writes(&f, 2);
        assert!(moved(&f, 2, changed(2, 2 * B as i64 + 7)));
        // Exactly our put: no listing.
        assert!(!moved(&f, 2, changed(2, 2 * B as i64)));
        // Our delete, counted, explains a drop of one entry of its size.
        listed(&f, 3);
        f.note_delete(&mh_in(3, 0), B);
        age_own_writes(&f, 3);
        assert!(!moved(&f, 3, changed(0, 0)));
        assert!(moved(&f, 3, changed(0, 5)));
    }

    fn counted(sig: u8, entries: i64) -> Counted {
        Counted {
            signature: vec![sig],
            entries,
            bytes: entries * B as i64,
        }
    }

    #[test]
    fn a_snapshot_restores_only_shards_whose_counters_still_match() {
        let f = NsFilter::new([0; 32], None);
        f.ready.store(true, Ordering::Release);
        f.mark_synced(Instant::now());
        {
            let mut shards = f.shards.write().unwrap();
            // Shards 1 and 2 were listed with counters A (one entry).
            for i in [1, 2] {
                shards[i].seen = Some(vec![0xA]);
                shards[i].seen_entries = Some(1);
                shards[i].seen_bytes = Some(B as i64);
                shards[i]
                    .filter
                    .insert_duplicated(mh_in(i as u8, 0).to_bytes())
                    .unwrap();
            }
        }
        // Our puts: shard 3 just now (maybe not counted yet), shard 4 long
        // ago (counted: its counters moved by exactly that).
        f.note_put(&mh_in(3, 0), B);
        f.note_put(&mh_in(4, 0), B);
        age_own_writes(&f, 4);
        let now: BTreeMap<usize, Counted> = [
            (1, counted(0xA, 1)),
            (2, counted(0xA, 1)),
            (3, counted(0xC, 1)),
            (4, counted(0xD, 1)),
        ]
        .into();
        let saved = f.saved_shards(&now);
        let by_shard = |i: u16| saved.iter().find(|s| s.shard == i);
        assert!(
            by_shard(3).is_none(),
            "a shard with uncounted writes is not saved"
        );
        assert_eq!(
            by_shard(4).unwrap().seen,
            Some(vec![0xD]),
            "saved with the counters that cover our put"
        );
        assert_eq!(by_shard(1).unwrap().seen, Some(vec![0xA]));
        assert_eq!(saved.len(), INDEX_SHARDS - 1);

        // Restart: shard 2 changed meanwhile (another connector's write),
        // shard 9 got its first entry; the rest is as saved.
        let later: BTreeMap<usize, Counted> = [
            (1, counted(0xA, 1)),
            (2, counted(0xB, 2)),
            (4, counted(0xD, 1)),
            (9, counted(0xE, 1)),
        ]
        .into();
        let g = NsFilter::new([0; 32], None);
        let restored = g.restore(saved, &later);
        assert!(restored[1] && restored[4] && restored[0]);
        assert!(!restored[2] && !restored[3] && !restored[9]);
        assert_eq!(g.stats().restored_shards, INDEX_SHARDS as u64 - 3);
        g.ready.store(true, Ordering::Release);
        g.mark_synced(Instant::now());
        // Restored shards answer: present is present, absent is absent.
        assert_eq!(g.check(&mh_in(1, 0)).map(|a| a.0), Some(true));
        assert_eq!(g.check(&mh_in(4, 0)).map(|a| a.0), Some(true));
        assert_eq!(g.check(&mh_in(1, 99)).map(|a| a.0), Some(false));
        // Changed or unsaved shards say "maybe" until listed.
        for shard in [2, 3, 9] {
            assert_eq!(g.check(&mh_in(shard, 99)).map(|a| a.0), Some(true));
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_written_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("gipfs-save-{}", rand::random::<u64>()));
        let path = snapshot::path(&dir, &[3; 32]);
        let f = NsFilter::new([3; 32], Some(path.clone()));
        let now: BTreeMap<usize, Counted> = [(1, counted(0xA, 1))].into();
        assert!(
            !f.save(&now, Vec::new()).await.unwrap(),
            "saved before ready"
        );
        f.ready.store(true, Ordering::Release);
        f.mark_synced(Instant::now());
        assert!(f.save(&now, Vec::new()).await.unwrap());
        assert!(
            !f.save(&now, Vec::new()).await.unwrap(),
            "unchanged, written again"
        );
        f.note_put(&mh_in(5, 1), B);
        // A shard with an uncounted write of ours is left out: the file
        // changes.
        assert!(f.save(&now, Vec::new()).await.unwrap());
        assert_eq!(f.stats().snapshots, 2);
        assert_eq!(
            snapshot::read(&path, &[3; 32]).map(|s| s.shards.len()),
            Some(INDEX_SHARDS - 1)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
