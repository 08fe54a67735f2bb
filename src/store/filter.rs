//! Answering "don't have it" from memory.
//!
//! A public IPFS node asks its store, all day, for blocks it does not have.
//! Each namespace of a daemon keeps an in-memory filter of the multihashes
//! its index holds, so that `has`, `get_size` and `get` of an absent block
//! cost no cluster request at all.
//!
//! - One quotient filter (`qfilter`, ~1.2 bytes per block at 1 % false
//!   positives) per index shard, 256 per namespace, so a shard can be
//!   rebuilt alone.
//! - The filter answers only once the first complete listing is done
//!   (kubo lost blocks by switching its Bloom filter on earlier); until
//!   then every lookup goes to the index.
//! - Our own puts enter the filter as soon as they are acknowledged.
//! - Everything else (our deletes, and puts and deletes by other
//!   connectors) is caught by polling the K2V counters storage nodes keep
//!   per shard, once per [`POLL_INTERVAL`]: a shard whose counters moved is
//!   listed again and its filter replaced. A block another connector wrote
//!   can thus be reported absent for at most the poll interval plus the
//!   time Garage takes to propagate its counters (measured: see the tests).
//!   A deleted block stays "maybe present" until its shard is rebuilt,
//!   which only costs an index read: the filter never turns a stored block
//!   into an absent one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use multihash::Multihash;
use serde::Serialize;

use super::index::{self, INDEX_SHARDS};
use super::{Error, GarageStore, Namespace};

/// How often counters are polled for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Target false-positive rate.
const FP_RATE: f64 = 0.01;

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
    /// Shard rebuilds after counter changes.
    pub rebuilds: u64,
    /// Multihashes in the filter.
    pub entries: u64,
    /// Bytes the filter uses.
    pub memory_bytes: u64,
    /// Whether the filter answers.
    pub ready: bool,
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
}

/// The filter of one namespace.
pub struct NsFilter {
    shards: RwLock<Vec<Shard>>,
    ready: AtomicBool,
    hits: AtomicU64,
    false_positives: AtomicU64,
    not_ready: AtomicU64,
    rebuilds: AtomicU64,
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
    fn new() -> Self {
        Self {
            shards: RwLock::new(
                (0..INDEX_SHARDS)
                    .map(|_| Shard {
                        filter: new_filter(0),
                        seen: None,
                        pending: None,
                        overflow: false,
                    })
                    .collect(),
            ),
            ready: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            false_positives: AtomicU64::new(0),
            not_ready: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// `Some(false)`: surely absent. `Some(true)`: maybe present. `None`:
    /// the filter is not ready yet.
    pub fn check(&self, mh: &Multihash<64>) -> Option<bool> {
        if !self.ready.load(Ordering::Acquire) {
            self.not_ready.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let shards = self.shards.read().unwrap();
        let shard = &shards[shard_of(mh)];
        let maybe = shard.overflow || shard.filter.contains(mh.to_bytes());
        if !maybe {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        Some(maybe)
    }

    /// The index said absent after the filter said maybe.
    pub fn note_false_positive(&self) {
        self.false_positives.fetch_add(1, Ordering::Relaxed);
    }

    /// A put of ours was acknowledged.
    pub fn note_put(&self, mh: &Multihash<64>) {
        let key = mh.to_bytes();
        let mut shards = self.shards.write().unwrap();
        let shard = &mut shards[shard_of(mh)];
        if let Some(p) = &mut shard.pending {
            p.push(key.clone());
        }
        if shard.filter.insert_duplicated(&key).is_err() {
            shard.overflow = true;
            shard.seen = None;
        }
    }

    /// The filter's counters.
    pub fn stats(&self) -> FilterStats {
        let shards = self.shards.read().unwrap();
        FilterStats {
            hits: self.hits.load(Ordering::Relaxed),
            false_positives: self.false_positives.load(Ordering::Relaxed),
            not_ready: self.not_ready.load(Ordering::Relaxed),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            entries: shards.iter().map(|s| s.filter.len()).sum(),
            memory_bytes: shards.iter().map(|s| s.filter.memory_usage() as u64).sum(),
            ready: self.ready.load(Ordering::Acquire),
        }
    }

    /// Starts the filter of a namespace: the first listing, then the
    /// polling loop, until the store or the filter is dropped.
    pub(super) fn start(store: Weak<GarageStore>, name: String) -> Arc<Self> {
        let filter = Arc::new(Self::new());
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

    async fn rebuild_shard(
        &self,
        ns: &Namespace,
        shard: usize,
        seen: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        self.shards.write().unwrap()[shard].pending = Some(Vec::new());
        let listed: Vec<Vec<u8>> = ns
            .list_shard_keys(shard)
            .await
            .inspect_err(|_| self.shards.write().unwrap()[shard].pending = None)?;
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
        s.seen = seen;
        s.overflow = false;
        Ok(())
    }
}

/// Counter values of each shard, serialized for comparison.
async fn counter_signatures(ns: &Namespace) -> Result<BTreeMap<usize, Vec<u8>>, Error> {
    let entries = ns.conn().k2v_counters(ns.id()).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let shard = usize::from_str_radix(&e.sk, 16).ok()?;
            Some((shard, rmp_serde::to_vec(&e.values).ok()?))
        })
        .collect())
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
    let before = counter_signatures(&ns).await?;
    for shard in 0..INDEX_SHARDS {
        let Some(f) = filter.upgrade() else {
            return Ok(());
        };
        f.rebuild_shard(&ns, shard, before.get(&shard).cloned())
            .await?;
        if shard % 64 == 63 {
            tracing::info!(ns = %name, shards = shard + 1, of = INDEX_SHARDS, "building presence filter");
        }
    }
    drop(ns);
    if let Some(f) = filter.upgrade() {
        f.ready.store(true, Ordering::Release);
        let s = f.stats();
        tracing::info!(
            ns = %name,
            blocks = s.entries,
            memory_bytes = s.memory_bytes,
            seconds = started.elapsed().as_secs_f64(),
            "presence filter ready"
        );
    }
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let (Some(f), Some(ns)) = (filter.upgrade(), namespace(store, name)) else {
            return Ok(());
        };
        let now = match counter_signatures(&ns).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot poll index counters; retrying");
                continue;
            }
        };
        let changed: Vec<usize> = {
            let shards = f.shards.read().unwrap();
            (0..INDEX_SHARDS)
                .filter(|s| now.get(s) != shards[*s].seen.as_ref())
                .collect()
        };
        for shard in changed {
            match f.rebuild_shard(&ns, shard, now.get(&shard).cloned()).await {
                Ok(()) => {
                    f.rebuilds.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(shard, cause = %e, "shard rebuild failed; retrying"),
            }
        }
    }
}

impl Namespace {
    /// The multihash bytes of every live entry of one index shard.
    pub(super) async fn list_shard_keys(&self, shard: usize) -> Result<Vec<Vec<u8>>, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let ns = self.clone();
        let task = tokio::spawn(async move { ns.list_shard(shard, &tx).await });
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

    fn mh(i: u32) -> Multihash<64> {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[0] = (i % 256) as u8;
        Multihash::wrap(0x12, &d).unwrap()
    }

    #[test]
    fn answers_only_when_ready_and_never_forgets_a_put() {
        let f = NsFilter::new();
        assert_eq!(f.check(&mh(1)), None, "not ready: no answer");
        f.ready.store(true, Ordering::Release);
        for i in 0..5000 {
            f.note_put(&mh(i));
        }
        // Past each shard's initial capacity: overflowed shards say maybe.
        for i in 0..5000 {
            assert_eq!(f.check(&mh(i)), Some(true), "{i} forgotten");
        }
        let absent = (5000..25_000)
            .filter(|i| f.check(&mh(*i)) == Some(false))
            .count();
        assert!(absent > 0);
        let s = f.stats();
        assert_eq!(s.hits, absent as u64);
        assert!(s.ready);
    }

    #[test]
    fn sized_filters_stay_small_and_accurate() {
        // A rebuilt shard of 4000 entries: about 2 bytes each at 1 % FP.
        let mut filter = new_filter(4000);
        for i in 0..4000u32 {
            filter.insert_duplicated(mh(i).to_bytes()).unwrap();
        }
        let per_entry = filter.memory_usage() as f64 / 4000.0;
        assert!(per_entry <= 2.5, "{per_entry} bytes per entry");
        let fp = (10_000..110_000u32)
            .filter(|i| filter.contains(mh(*i).to_bytes()))
            .count();
        assert!(fp < 1000, "{fp} false positives in 100000");
    }
}
