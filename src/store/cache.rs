//! A bounded cache of index entries and block bytes.
//!
//! Popular content is read over and over; without a cache every read costs
//! an index read and a block transfer from one of the block's three nodes.
//! Blocks are immutable, so cached bytes never go stale; presence can (a
//! delete by another connector). Entries are therefore only used while the
//! namespace's presence filter answers, and each carries the filter epoch
//! of its index shard when it was cached: a shard rebuilt after a change
//! seen in the cluster gets a new epoch, which retires its cached entries.
//! Our own deletes remove their entries directly.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use garage_util::data::{Hash, Uuid};
use multihash::Multihash;
use quick_cache::sync::Cache;
use serde::Serialize;

use super::index::Entry;

/// The cache key of a pack: under a namespace id no namespace has, its
/// hash as a BLAKE2b-256 multihash.
fn pack_key(hash: &Hash) -> (Uuid, Multihash<64>) {
    let packs = Uuid::from([0xff; 32]);
    let mh = Multihash::wrap(0xb220, hash.as_slice()).expect("32-byte digest");
    (packs, mh)
}

#[derive(Clone)]
struct Cached {
    epoch: u32,
    entry: Entry,
    data: Option<Bytes>,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<(Uuid, Multihash<64>), Cached> for ByBytes {
    fn weight(&self, _: &(Uuid, Multihash<64>), v: &Cached) -> u64 {
        let inline = v.entry.inline.as_ref().map_or(0, |d| d.len());
        (200 + inline + v.data.as_ref().map_or(0, |d| d.len())) as u64
    }
}

/// Hits and misses of the cache.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the cluster.
    pub misses: u64,
    /// Bytes held (entries, inline blocks and block bytes).
    pub bytes: u64,
}

/// The cache; capacity 0 disables it.
pub(crate) struct BlockCache {
    cache: Option<Cache<(Uuid, Multihash<64>), Cached, ByBytes>>,
    /// Switched off, it neither answers nor stores.
    enabled: std::sync::atomic::AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    /// A cache of at most `bytes` bytes.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            cache: (bytes > 0)
                .then(|| Cache::with_weighter(bytes / 1024 + 16, bytes as u64, ByBytes)),
            enabled: std::sync::atomic::AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn active(&self) -> Option<&Cache<(Uuid, Multihash<64>), Cached, ByBytes>> {
        self.cache
            .as_ref()
            .filter(|_| self.enabled.load(Ordering::Relaxed))
    }

    /// Switches the cache on or off (the benchmark's cold-read phases).
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The cached index entry and, when cached too, the block's bytes,
    /// if cached under this epoch. A lookup that needs the bytes of a
    /// block stored outside the index and finds only the entry counts as
    /// a miss: the cluster is asked anyway.
    pub(crate) fn lookup(
        &self,
        ns: Uuid,
        mh: &Multihash<64>,
        epoch: u32,
        need_data: bool,
    ) -> Option<(Entry, Option<Bytes>)> {
        let cache = self.active()?;
        let found = cache.get(&(ns, *mh)).filter(|c| c.epoch == epoch);
        let answered = found
            .as_ref()
            .is_some_and(|c| !need_data || c.data.is_some() || c.entry.inline.is_some());
        let counter = if answered { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(|c| (c.entry, c.data))
    }

    /// Caches an index entry (keeping bytes cached under the same epoch).
    pub(crate) fn put_entry(&self, ns: Uuid, mh: &Multihash<64>, epoch: u32, entry: &Entry) {
        let Some(cache) = self.active() else { return };
        let data = cache
            .get(&(ns, *mh))
            .filter(|c| c.epoch == epoch)
            .and_then(|c| c.data);
        cache.insert(
            (ns, *mh),
            Cached {
                epoch,
                entry: entry.clone(),
                data,
            },
        );
    }

    /// Caches a block's bytes with its entry.
    pub(crate) fn put_data(
        &self,
        ns: Uuid,
        mh: &Multihash<64>,
        epoch: u32,
        entry: &Entry,
        data: &Bytes,
    ) {
        let Some(cache) = self.active() else { return };
        cache.insert(
            (ns, *mh),
            Cached {
                epoch,
                entry: entry.clone(),
                data: Some(data.clone()),
            },
        );
    }

    /// A pack's bytes, if cached. Packs are immutable and named by their
    /// hash, so they need no epoch: whether a block in one is still stored
    /// is the pack map's to say.
    pub(crate) fn pack(&self, hash: &Hash) -> Option<Bytes> {
        let cache = self.active()?;
        let found = cache.get(&pack_key(hash)).and_then(|c| c.data);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a pack's bytes.
    pub(crate) fn put_pack(&self, hash: &Hash, data: &Bytes) {
        let Some(cache) = self.active() else { return };
        let entry = Entry {
            hash: *hash,
            size: data.len() as u32,
            generation: 0,
            codec: 0,
            inline: None,
            packed: None,
        };
        cache.insert(
            pack_key(hash),
            Cached {
                epoch: 0,
                entry,
                data: Some(data.clone()),
            },
        );
    }

    /// Forgets a block (our own delete).
    pub(crate) fn remove(&self, ns: Uuid, mh: &Multihash<64>) {
        if let Some(cache) = &self.cache {
            cache.remove(&(ns, *mh));
        }
    }

    /// Forgets everything (benchmarks measure cold reads).
    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.cache.as_ref().map_or(0, |c| c.weight()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garage_util::data::blake2sum;

    fn mh(i: u8) -> Multihash<64> {
        Multihash::wrap(0x12, &[i; 32]).unwrap()
    }

    fn entry() -> Entry {
        Entry {
            hash: blake2sum(b"x"),
            size: 1,
            generation: 0,
            codec: 0x55,
            inline: None,
            packed: None,
        }
    }

    #[test]
    fn entries_live_only_in_their_epoch_and_until_removed() {
        let c = BlockCache::new(1 << 20);
        let ns = blake2sum(b"ns");
        c.put_entry(ns, &mh(1), 3, &entry());
        let (e, data) = c.lookup(ns, &mh(1), 3, true).expect("the entry is cached");
        assert_eq!((e.size, data), (1, None), "no bytes yet: a miss");
        assert!(
            c.lookup(ns, &mh(1), 3, false).is_some(),
            "the entry alone: a hit"
        );
        c.put_data(ns, &mh(1), 3, &entry(), &Bytes::from_static(b"x"));
        let (_, data) = c.lookup(ns, &mh(1), 3, true).unwrap();
        assert_eq!(data.as_deref(), Some(&b"x"[..]));
        assert!(
            c.lookup(ns, &mh(1), 4, false).is_none(),
            "a newer epoch retires it"
        );
        assert!(c.lookup(blake2sum(b"other"), &mh(1), 3, false).is_none());
        c.remove(ns, &mh(1));
        assert!(c.lookup(ns, &mh(1), 3, false).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (2, 4));
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let c = BlockCache::new(1 << 20);
        let ns = blake2sum(b"ns");
        let block = Bytes::from(vec![0u8; 64 * 1024]);
        for i in 0..100u8 {
            c.put_data(ns, &mh(i), 0, &entry(), &block);
        }
        let bytes = c.stats().bytes;
        assert!(bytes <= 1 << 20 && bytes > 0, "{bytes} bytes");
        // It keeps some (not an evict-everything cache), and only what fits.
        let kept = (0..100u8)
            .filter(|i| {
                c.lookup(ns, &mh(*i), 0, true)
                    .is_some_and(|(_, d)| d.is_some())
            })
            .count();
        assert!(
            (1..=16).contains(&kept),
            "{kept} blocks of 64 KiB kept in 1 MiB"
        );
        // A cache of no bytes keeps nothing.
        let off = BlockCache::new(0);
        off.put_data(ns, &mh(1), 0, &entry(), &block);
        assert!(off.lookup(ns, &mh(1), 0, false).is_none());
    }
}
