//! The store against a real three-node Garage cluster.
#![cfg(feature = "integration-tests")]

mod common;

use bytes::Bytes;
use cid::Cid;
use common::*;
use futures::TryStreamExt;
use garage_ipfs::cid::{self as cidutil, codec, CidError, MAX_BLOCK_SIZE};
use std::time::{Duration, Instant};

use garage_ipfs::garage::{Call, Op};
use garage_ipfs::store::INLINE_MAX;
use garage_ipfs::store::{
    BlockStore, CompactHooks, CompactOptions, Error, GarageStore, MemBlockStore, Namespace,
    PackStorage, RefState,
};

/// Sizes worth a round trip, each for a reason.
const INTERESTING_SIZES: &[usize] = &[
    0,              // the empty block
    1,              // the smallest non-empty one
    3071,           // Garage's inline threshold (3072) - 1
    3072,           // the threshold itself
    3073,           // threshold + 1
    262_144,        // a typical UnixFS chunk (256 KiB)
    1024 * 1024,    // the dev cluster's Garage block_size (1 MiB), ipfs-car's chunk
    MAX_BLOCK_SIZE, // kubo's 2 MiB limit
];

const SHA2_256: u64 = 0x12;
const BLAKE3: u64 = 0x1e;

#[test]
fn store_suite_mem() {
    run(blockstore_suite(&MemBlockStore::new()));
}

#[test]
fn store_suite_garage() {
    run(async {
        let ns = store().await.namespace(&unique_ns("suite")).unwrap();
        blockstore_suite(&ns).await;
    });
}

#[test]
fn store_round_trip_sizes_codecs_hashes() {
    run(async {
        let ns = store().await.namespace(&unique_ns("sizes")).unwrap();
        let mut stored = Vec::new();
        for &size in INTERESTING_SIZES {
            for c in [codec::RAW, codec::DAG_PB, codec::DAG_CBOR] {
                for h in [SHA2_256, BLAKE3] {
                    let (cid, data) = random_block(c, h, size);
                    ns.put(&cid, data.clone())
                        .await
                        .unwrap_or_else(|e| panic!("put {size} bytes {cid}: {e}"));
                    stored.push((cid, data));
                }
            }
        }
        for (cid, data) in &stored {
            let back = ns.get(cid).await.unwrap().expect("stored block readable");
            assert_eq!(&back, data, "{cid}");
            assert_eq!(ns.get_size(cid).await.unwrap(), Some(data.len() as u64));
            assert!(ns.has(cid).await.unwrap());
        }
        // The index is keyed by multihash: the empty block under three
        // codecs is one entry per hash function.
        let mut listed: Vec<_> = ns.list().try_collect().await.unwrap();
        let mut expected: Vec<_> = stored.iter().map(|(c, _)| *c.hash()).collect();
        for v in [&mut listed, &mut expected] {
            v.sort_by_key(|m| m.to_bytes());
        }
        expected.dedup();
        assert_eq!(listed, expected);

        // One byte over the limit: refused, nothing stored.
        let (cid, data) = random_block(codec::RAW, SHA2_256, MAX_BLOCK_SIZE + 1);
        let err = ns.put(&cid, data).await.unwrap_err();
        assert!(
            matches!(err, Error::Cid(CidError::TooLarge { size, .. }) if size == MAX_BLOCK_SIZE + 1),
            "{err}"
        );
        assert!(
            err.to_string().contains("over the 2097152-byte limit"),
            "{err}"
        );
        assert!(!ns.has(&cid).await.unwrap());
    });
}

#[test]
fn store_put_reaches_every_node_with_refcount_1() {
    run(async {
        let ns = store().await.namespace(&unique_ns("rc1")).unwrap();
        let (cid, data) = random_block(codec::RAW, SHA2_256, 262_144);
        ns.put(&cid, data.clone()).await.unwrap();
        wait_for_replicas(&data).await;
        assert_refcount(&data, 1);
    });
}

#[test]
fn store_dedup_across_namespaces() {
    run(async {
        let store = store().await;
        let a = store.namespace(&unique_ns("dedup-a")).unwrap();
        let b = store.namespace(&unique_ns("dedup-b")).unwrap();
        let (cid, data) = random_block(codec::RAW, SHA2_256, 5000);
        a.put(&cid, data.clone()).await.unwrap();
        b.put(&cid, data.clone()).await.unwrap();
        // One Garage block (content-addressed): one file per node, two refs.
        wait_for_replicas(&data).await;
        assert_refcount(&data, 2);

        assert!(a.delete(&cid).await.unwrap());
        assert!(!a.has(&cid).await.unwrap());
        assert_eq!(b.get(&cid).await.unwrap(), Some(data.clone()));
        assert_refcount_with_deleted_refs(&data, 1);

        assert!(b.delete(&cid).await.unwrap());
        assert!(!b.has(&cid).await.unwrap());
        assert_refcount(&data, 0);
    });
}

#[test]
fn store_delete_then_put_again() {
    run(async {
        let ns = store().await.namespace(&unique_ns("reput")).unwrap();
        let (cid, data) = random_block(codec::DAG_CBOR, BLAKE3, 40_000);
        ns.put(&cid, data.clone()).await.unwrap();
        assert!(ns.delete(&cid).await.unwrap());
        assert_refcount(&data, 0);
        ns.put(&cid, data.clone()).await.unwrap();
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data.clone()));
        assert_refcount_with_deleted_refs(&data, 1);
        // And once more, to use a third anchor generation.
        assert!(ns.delete(&cid).await.unwrap());
        ns.put(&cid, data.clone()).await.unwrap();
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data.clone()));
        assert_refcount_with_deleted_refs(&data, 1);
    });
}

#[test]
fn store_second_connector_sees_everything() {
    run(async {
        let name = unique_ns("second");
        let ns = store().await.namespace(&name).unwrap();
        let mut blocks = Vec::new();
        for i in 0..40 {
            let (cid, data) = random_block(codec::RAW, SHA2_256, 100 * i + 1);
            ns.put(&cid, data.clone()).await.unwrap();
            blocks.push((cid, data));
        }
        let other = garage_ipfs::GarageStore::new(new_connector("second").await);
        let ns2 = other.namespace(&name).unwrap();
        let mut listed: Vec<_> = ns2.list().try_collect().await.unwrap();
        let mut expected: Vec<_> = blocks.iter().map(|(c, _)| *c.hash()).collect();
        listed.sort_by_key(|m| m.to_bytes());
        expected.sort_by_key(|m| m.to_bytes());
        assert_eq!(listed, expected);
        for (cid, data) in &blocks {
            assert_eq!(ns2.get(cid).await.unwrap().as_ref(), Some(data));
        }
        other.connector().shutdown();
    });
}

#[test]
fn store_bad_input_is_refused_and_stores_nothing() {
    run(async {
        let ns = store().await.namespace(&unique_ns("bad")).unwrap();
        // Data that does not match its CID.
        let (cid, data) = random_block(codec::RAW, SHA2_256, 4096);
        let mut wrong = data.to_vec();
        wrong[0] ^= 1;
        let err = ns.put(&cid, Bytes::from(wrong.clone())).await.unwrap_err();
        assert!(err.to_string().contains("does not match CID"), "{err}");
        assert!(!ns.has(&cid).await.unwrap());
        let hash = garage_util::data::blake2sum(&wrong);
        for n in &cluster().nodes {
            assert!(
                !n.block_path(hash.as_slice()).exists(),
                "mismatched data reached node{}",
                n.index
            );
        }

        // Malformed CID strings.
        for s in ["", "bafy", "Qm123", "not a cid", "bafkreigh2akiscaildc@"] {
            let err = cidutil::parse(s).unwrap_err().to_string();
            assert!(err.starts_with("malformed CID"), "{s:?}: {err}");
        }

        // A hash function we do not verify (md5).
        let md5 = Cid::new_v1(
            codec::RAW,
            multihash::Multihash::wrap(0xd5, &[1; 16]).unwrap(),
        );
        for err in [
            ns.put(&md5, Bytes::from_static(b"x")).await.unwrap_err(),
            ns.get(&md5).await.unwrap_err(),
            ns.has(&md5).await.unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("unsupported hash function 0xd5"),
                "{err}"
            );
        }

        // Namespace names.
        let store = store().await;
        for bad in ["", "a/b", "x y", &"n".repeat(65)] {
            assert!(
                matches!(store.namespace(bad), Err(Error::BadNamespace(_))),
                "{bad:?}"
            );
        }
    });
}

/// Garage's own repair procedures must leave our refs, and so our blocks,
/// alone (design: anchors).
#[test]
fn store_survives_garage_repairs() {
    run(async {
        let store = store().await;
        let ns = store.namespace(&unique_ns("repair")).unwrap();
        let mut blocks = Vec::new();
        for i in 0..12 {
            let (cid, data) = random_block(codec::RAW, SHA2_256, 4000 + 5000 * i);
            ns.put(&cid, data.clone()).await.unwrap();
            blocks.push((cid, data));
        }
        let mut inline = Vec::new();
        for _ in 0..3 {
            let (cid, data) = random_block(codec::RAW, SHA2_256, 1000);
            ns.put(&cid, data.clone()).await.unwrap();
            inline.push((cid, data));
        }
        // A re-put after a delete lives under a second generation anchor.
        let (cid, data) = &blocks[0];
        ns.delete(cid).await.unwrap();
        ns.put(cid, data.clone()).await.unwrap();

        for what in ["tables", "blocks", "versions", "block-refs", "block-rc"] {
            repair_to_completion(what).await;
        }
        for (i, (cid, data)) in blocks.iter().enumerate() {
            if i == 0 {
                assert_refcount_with_deleted_refs(data, 1);
            } else {
                assert_refcount(data, 1);
            }
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
        for (cid, data) in &inline {
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
    });
}

/// With packing off, blocks up to Garage's inline threshold live in their
/// index entry: no ref, no block file on any node; they read back, list
/// and delete like any block. One byte more and the block goes to the
/// block manager.
#[test]
fn store_small_blocks_live_inline_in_the_index_with_packing_off() {
    run(async {
        let conn = new_connector_with("inline", |c| c.with_pack_small_blocks(false)).await;
        let ns = GarageStore::new(conn)
            .namespace(&unique_ns("inline"))
            .unwrap();
        let small = [
            random_block(codec::RAW, SHA2_256, 1024),
            random_block(codec::DAG_CBOR, BLAKE3, INLINE_MAX),
        ];
        let (big_cid, big) = random_block(codec::RAW, SHA2_256, INLINE_MAX + 1);
        for (cid, data) in small.iter().chain([&(big_cid, big.clone())]) {
            ns.put(cid, data.clone()).await.unwrap();
        }
        wait_for_replicas(&big).await;
        assert_refcount(&big, 1);
        let entry = ns.entry(big_cid.hash()).await.unwrap().0.unwrap();
        assert!(entry.inline.is_none());
        for (cid, data) in &small {
            let entry = ns.entry(cid.hash()).await.unwrap().0.expect("indexed");
            assert_eq!(entry.inline.as_ref(), Some(data), "{cid} inline");
            assert_eq!(entry.size as usize, data.len());
            for i in 0..3 {
                let path = replica_path(i, data);
                assert!(!path.exists(), "{cid}: a block file {}", path.display());
            }
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data));
            assert_eq!(ns.get_size(cid).await.unwrap(), Some(data.len() as u64));
        }
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(ns.delete(&small[0].0).await.unwrap());
        assert!(!ns.has(&small[0].0).await.unwrap());
        assert_eq!(ns.get(&small[0].0).await.unwrap(), None);
        assert!(!ns.delete(&small[0].0).await.unwrap());
        // Put again after the delete (over the tombstone).
        ns.put(&small[0].0, small[0].1.clone()).await.unwrap();
        assert_eq!(
            ns.get(&small[0].0).await.unwrap().as_ref(),
            Some(&small[0].1)
        );
    });
}

/// Group commit: concurrent puts share their index (and ref) writes, small
/// ones share packs, and each call is accounted to the operation that made
/// it.
#[test]
fn store_concurrent_puts_share_requests() {
    run(async {
        let conn = new_connector("batch").await;
        let store = GarageStore::new(conn.clone());
        // Registered first, so that what is counted is the puts' own writes.
        let ns = store.create_namespace(&unique_ns("batch")).await.unwrap();
        let calls = conn.call_counters();
        let count = |call| calls.get(Op::Put, call);

        let small: Vec<_> = (0..64)
            .map(|_| random_block(codec::RAW, SHA2_256, 1024))
            .collect();
        let others = || calls.for_op(Op::Other) + calls.for_op(Op::Get) + calls.for_op(Op::Has);
        let others_before = others();
        let (writes, blocks) = (count(Call::K2vWrite), count(Call::BlockPut));
        futures::future::try_join_all(small.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        let small_writes = count(Call::K2vWrite) - writes;
        let stats = ns.pack_stats();
        let packs = stats.packs_written;
        eprintln!(
            "64 concurrent 1 KiB puts: {packs} packs, {} blocks inline in {} batches, \
             {small_writes} index write requests",
            stats.inline_blocks, stats.inline_batches
        );
        // Shared: a pack holds what waits while 2 are in flight, so 64 puts
        // that arrive together leave in a few packs (16 is a generous
        // bound), each two K2V writes (its row, then its manifest) and no
        // block write, batched further; a batch too small for a pack is
        // written inline, its entries in one request; and they are the
        // puts' own, counted as puts.
        assert!((1..=16).contains(&packs), "{packs} packs");
        assert!(
            stats.inline_blocks < 4 * stats.inline_batches.max(1),
            "{stats:?}: an inline batch of 4 or more"
        );
        assert!(
            (1..=2 * packs + stats.inline_batches).contains(&small_writes),
            "{small_writes} index write requests for {packs} packs and {} inline batches",
            stats.inline_batches
        );
        assert_eq!(
            count(Call::BlockPut) - blocks,
            0,
            "a pack is rows, no block"
        );

        let big: Vec<_> = (0..16)
            .map(|_| random_block(codec::RAW, SHA2_256, 256 * 1024))
            .collect();
        let (writes, blocks) = (count(Call::K2vWrite), count(Call::BlockPut));
        futures::future::try_join_all(big.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        let big_writes = count(Call::K2vWrite) - writes;
        eprintln!("16 concurrent 256 KiB puts: {big_writes} index write requests");
        assert!(
            (1..16).contains(&big_writes),
            "{big_writes} index write requests"
        );
        assert_eq!(count(Call::BlockPut) - blocks, 16, "one block write each");
        assert_eq!(
            others(),
            others_before,
            "puts counted under another operation"
        );

        let puts_before = calls.for_op(Op::Put);
        for (cid, data) in small.iter().chain(&big) {
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
        // No cache in this store: one block read per get of a big block,
        // from the first node that has it (all are up), counted as gets; a
        // small block is read from its pack's row (or its inline entry).
        assert_eq!(calls.get(Op::Get, Call::BlockGet), 16);
        assert_eq!(calls.for_op(Op::Put), puts_before, "gets counted as puts");
    });
}

/// Small blocks are written many to a pack, with no index entry of their
/// own; another connector reads, lists and deletes them; the writer's map
/// sees those deletes; verify checks them through their packs; and packs
/// whose every block is deleted are removed.
#[test]
fn store_small_blocks_are_packed_and_other_connectors_read_list_and_delete_them() {
    run(async {
        let name = unique_ns("packs");
        let writer_conn = new_connector("packs-writer").await;
        let writer = GarageStore::with_filters(writer_conn.clone());
        let ns = writer.namespace(&name).unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;
        let small: Vec<_> = (0..300)
            .map(|i| random_block(codec::RAW, SHA2_256, 1 + (i * 97) % INLINE_MAX))
            .collect();
        let calls = writer_conn.call_counters();
        let block_puts = calls.get(Op::Put, Call::BlockPut);
        futures::future::try_join_all(small.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        let stats = ns.pack_stats();
        let packs = stats.packs_written;
        eprintln!(
            "300 concurrent small puts: {packs} packs, {} blocks inline in {} batches",
            stats.inline_blocks, stats.inline_batches
        );
        assert!(
            (1..=75).contains(&packs),
            "{packs} packs for 300 puts (at least 4 blocks a pack)"
        );
        assert!(
            stats.inline_blocks < 4 * stats.inline_batches.max(1),
            "{stats:?}: an inline batch of 4 or more"
        );
        assert_eq!(
            calls.get(Op::Put, Call::BlockPut) - block_puts,
            0,
            "packs are rows"
        );
        // Each block is in a pack or has an inline entry, never both.
        let mut inline = 0;
        for (cid, data) in &small {
            let (entry, _) = ns.entry(cid.hash()).await.unwrap();
            // The map is looked up first: a packed block shows as such.
            let stored = ns.stored_entry(cid.hash()).await.unwrap();
            let packed = stored.is_some_and(|e| e.packed.is_some());
            match entry {
                Some(e) => {
                    assert_eq!(e.inline.as_ref(), Some(data), "{cid}");
                    assert!(!packed, "{cid}: packed and inline");
                    inline += 1;
                }
                None => assert!(packed, "{cid}: neither packed nor inline"),
            }
        }
        assert_eq!(inline, stats.inline_blocks);
        // A put that arrives alone is written inline: a pack of one would
        // cost a block, a ref and a manifest for one index entry saved.
        let lone: Vec<_> = (0..3)
            .map(|i| random_block(codec::RAW, SHA2_256, 100 + i))
            .collect();
        for (cid, data) in &lone {
            ns.put(cid, data.clone()).await.unwrap();
            let (entry, _) = ns.entry(cid.hash()).await.unwrap();
            assert_eq!(entry.and_then(|e| e.inline).as_ref(), Some(data), "{cid}");
        }
        assert_eq!(ns.pack_stats().packs_written, packs, "a pack of one");
        for (cid, _) in &lone {
            assert!(ns.delete(cid).await.unwrap());
        }

        // Another connector (no filter: it builds its map on first need).
        let reader = GarageStore::new(new_connector("packs-reader").await)
            .namespace(&name)
            .unwrap();
        for (cid, data) in &small {
            assert_eq!(reader.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
            assert_eq!(reader.get_size(cid).await.unwrap(), Some(data.len() as u64));
        }
        let listed: Vec<_> = reader.list().try_collect().await.unwrap();
        let set: std::collections::HashSet<_> = listed.iter().map(|m| m.to_bytes()).collect();
        assert_eq!(listed.len(), 300, "each block listed once");
        assert!(small
            .iter()
            .all(|(c, _)| set.contains(&c.hash().to_bytes())));
        // Putting them again writes nothing: the map knows them.
        for (cid, data) in small.iter().take(10) {
            reader.put(cid, data.clone()).await.unwrap();
        }
        assert_eq!(
            reader.pack_stats().packs_written,
            0,
            "a re-put packed again"
        );

        // Verify reads each pack once and checks every block in it.
        let entries: Vec<_> = reader.list_entries().try_collect().await.unwrap();
        assert_eq!(
            entries.iter().filter(|(_, e)| e.packed.is_some()).count() as u64,
            300 - inline
        );
        let summary = reader
            .verify_entries(entries.clone(), |_| ())
            .await
            .unwrap();
        assert!(summary.clean(), "verify: {summary:?}");
        assert_eq!(summary.checked, 300);
        let (mh, entry) = entries.iter().find(|(_, e)| e.packed.is_some()).unwrap();
        let report = reader
            .verify_block(*mh, entry.clone(), &mut Default::default())
            .await
            .unwrap();
        assert!(report.packed && report.healthy(), "{report:?}");
        // A pack's row is checked as one good copy, as an inline entry is.
        assert_eq!(report.reference, RefState::Row);
        assert_eq!(report.replicas.len(), 1);

        // The reader deletes half; a third connector and the writer (whose
        // map follows the manifests' counters) see it.
        let (gone, kept) = small.split_at(150);
        for (cid, _) in gone {
            assert!(reader.delete(cid).await.unwrap(), "{cid}");
            assert!(!reader.delete(cid).await.unwrap(), "{cid} deleted twice");
        }
        let third = GarageStore::new(new_connector("packs-third").await)
            .namespace(&name)
            .unwrap();
        for (cid, _) in gone {
            assert!(!third.has(cid).await.unwrap(), "{cid} deleted, still there");
            assert_eq!(third.get(cid).await.unwrap(), None);
        }
        for (cid, data) in kept {
            assert_eq!(third.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
        let listed: Vec<_> = third.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 150);
        let start = Instant::now();
        for (cid, _) in gone {
            while ns.has(cid).await.unwrap() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "the writer does not see a foreign delete in 20 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        eprintln!(
            "foreign deletes of packed blocks seen after {:?}",
            start.elapsed()
        );
        for (cid, data) in kept {
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }

        // Packs left with no live block are removed; the others stay.
        let packs_left = third.reclaim_packs(|_| ()).await.unwrap();
        for (cid, _) in kept {
            assert!(third.delete(cid).await.unwrap(), "{cid}");
        }
        let removed = third.reclaim_packs(|_| ()).await.unwrap() + packs_left;
        assert_eq!(removed, packs, "every pack removed once empty");
        assert_eq!(writer.count_blocks(&name).await.unwrap(), 0);
        let fresh = GarageStore::new(new_connector("packs-fresh").await)
            .namespace(&name)
            .unwrap();
        let listed: Vec<_> = fresh.list().try_collect().await.unwrap();
        assert!(listed.is_empty(), "{} blocks listed", listed.len());
        for (cid, _) in small.iter().step_by(10) {
            assert!(!fresh.has(cid).await.unwrap());
        }
    });
}

/// Compaction rewrites packs that are mostly deleted into new ones and
/// retires them; a compaction stopped between its new pack and the
/// retirements (as a kill there would) is finished by the next run, with
/// the delete made meanwhile; a connector whose map predates it still
/// reads (and deletes) through it; one run at a time; retired packs and a
/// pack row no manifest names are kept at least an hour whatever the
/// grace, then removed, and nothing live is lost.
#[test]
fn store_compaction_rewrites_mostly_deleted_packs_and_loses_no_live_block() {
    run(async {
        let name = unique_ns("compact");
        let writer = GarageStore::new(new_connector("compact-writer").await)
            .namespace(&name)
            .unwrap();
        let blocks: Vec<_> = (0..400)
            .map(|_| random_block(codec::RAW, SHA2_256, 1000))
            .collect();
        futures::future::try_join_all(blocks.iter().map(|(c, d)| writer.put(c, d.clone())))
            .await
            .unwrap();
        let packs = writer.pack_stats().packs_written;
        assert!(packs >= 4, "{packs} packs for 400 concurrent puts");
        // Three in four deleted: most packs are now mostly deleted.
        let (mut live, mut gone) = (Vec::new(), Vec::new());
        for (i, b) in blocks.into_iter().enumerate() {
            if i % 4 == 0 {
                live.push(b);
            } else {
                assert!(writer.delete(&b.0).await.unwrap(), "{}", b.0);
                gone.push(b);
            }
        }
        // Lone puts, each written inline in its index entry: compaction
        // leaves them there.
        for _ in 0..6 {
            let (cid, data) = random_block(codec::RAW, SHA2_256, 900);
            writer.put(&cid, data.clone()).await.unwrap();
            live.push((cid, data));
        }
        // A connector whose map is built now, before the compaction.
        let stale = GarageStore::new(new_connector("compact-stale").await)
            .namespace(&name)
            .unwrap();
        assert_holds_exactly(&stale, &live, &gone).await;
        // (A batch of fewer than four is written inline, not packed.)
        let (mut packed_live, mut inline_live) = (0, 0);
        let mut pack_of = std::collections::HashMap::new();
        for (cid, _) in &live {
            let entry = stale.stored_entry(cid.hash()).await.unwrap().unwrap();
            if entry.packed.is_some() {
                packed_live += 1;
                pack_of.insert(*cid, entry.hash);
            }
            inline_live += entry.inline.is_some() as u64;
        }
        assert!(packed_live >= 90, "{packed_live} of 106 live blocks packed");
        assert_eq!(packed_live + inline_live, live.len() as u64);

        // A run stopped right after its first new pack: its sources are
        // not retired. A block of one of them is then deleted through a
        // map that knows only the source (the new pack has a live copy).
        let admin = GarageStore::new(new_connector("compact-admin").await)
            .namespace(&name)
            .unwrap();
        let stopped = admin
            .compact_packs(
                &CompactOptions {
                    hooks: CompactHooks {
                        stop_after_new_pack: true,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                |_| (),
            )
            .await
            .unwrap();
        assert_eq!((stopped.written, stopped.compacted), (1, 0), "{stopped:?}");
        let fresh = GarageStore::new(new_connector("compact-midway").await)
            .namespace(&name)
            .unwrap();
        assert_holds_exactly(&fresh, &live, &gone).await;
        // Packs are compacted in the order of their hashes: the first with
        // a few live blocks (three quarters of it deleted) is a source of
        // the stopped run's new pack (those before it are nearly empty).
        let mut live_in = std::collections::BTreeMap::new();
        for pack in pack_of.values() {
            *live_in.entry(*pack).or_insert(0) += 1;
        }
        let first_source = *live_in.iter().find(|(_, n)| **n >= 3).unwrap().0;
        let mut deleted_midway = 0;
        for i in (0..live.len()).rev() {
            let cid = live[i].0;
            if deleted_midway < 2 && pack_of.get(&cid) == Some(&first_source) {
                assert!(admin.delete_from_pack(&first_source, &cid).await.unwrap());
                deleted_midway += 1;
                gone.push(live.remove(i));
            }
        }
        assert_eq!(deleted_midway, 2);
        // One of them is put again through a connector whose map holds the
        // new pack's copy, live there: that copy is not trusted (its
        // source says deleted, and finishing the compaction deletes it),
        // so the put stores its own.
        let again = gone.pop().unwrap();
        fresh.put(&again.0, again.1.clone()).await.unwrap();
        live.push(again);

        let dry = admin
            .compact_packs(
                &CompactOptions {
                    dry_run: true,
                    ..Default::default()
                },
                |_| (),
            )
            .await
            .unwrap();
        let done = admin
            .compact_packs(&CompactOptions::default(), |_| ())
            .await
            .unwrap();
        eprintln!("stopped: {stopped:?}\ncompaction: {done:?}");
        assert!(done.skipped.is_empty(), "{done:?}");
        assert_eq!(done.finished, 1, "the stopped run is finished: {done:?}");
        assert_eq!(done.blocks, packed_live - 2, "{done:?}");
        assert!(done.compacted >= 1 && done.written >= 1, "{done:?}");
        assert!(done.written <= done.compacted, "{done:?}");
        assert!(done.blocks_moved <= packed_live, "{done:?}");
        assert!(done.bytes_freed >= 1000 * done.compacted, "{done:?}");
        assert_eq!(done.retired_kept + done.retired_removed, 0, "{done:?}");
        assert_eq!(
            (dry.finished, dry.compacted, dry.written, dry.blocks_moved),
            (
                done.finished,
                done.compacted,
                done.written,
                done.blocks_moved
            ),
            "the dry run announced something else"
        );

        // Through a fresh connector, the connector whose map predates the
        // compaction, and the one that compacted: the blocks deleted while
        // the compaction was midway are gone from its new pack too.
        let fresh = GarageStore::new(new_connector("compact-fresh").await)
            .namespace(&name)
            .unwrap();
        for ns in [&fresh, &stale, &admin] {
            assert_holds_exactly(ns, &live, &gone).await;
        }
        let entries: Vec<_> = fresh.list_entries().try_collect().await.unwrap();
        let summary = fresh.verify_entries(entries, |_| ()).await.unwrap();
        assert!(summary.clean(), "verify: {summary:?}");
        assert_eq!(summary.checked, live.len() as u64);

        // A delete through a map that knows only the retired pack reaches
        // the new one.
        let i = live
            .iter()
            .position(|(c, _)| pack_of.get(c) == Some(&first_source))
            .expect("a live block left in the first source");
        let (cid, data) = live.remove(i);
        assert!(stale.delete(&cid).await.unwrap(), "{cid}");
        gone.push((cid, data));
        let again = GarageStore::new(new_connector("compact-again").await)
            .namespace(&name)
            .unwrap();
        assert_holds_exactly(&again, &live, &gone).await;

        // One run at a time: a second one started while the first lists
        // the namespace is refused.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let mut started_tx = Some(started_tx);
        let defaults = CompactOptions::default();
        let first = admin.compact_packs(&defaults, move |_| {
            if let Some(tx) = started_tx.take() {
                let _ = tx.send(());
            }
        });
        let second = async {
            started_rx.await.unwrap();
            again
                .compact_packs(&CompactOptions::default(), |_| ())
                .await
        };
        let (first, second) = tokio::join!(first, second);
        let kept = first.unwrap();
        let refused = second.expect_err("two compactions at once");
        assert!(
            matches!(refused, Error::CompactionRunning { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("--break-lease"), "{refused}");

        // Retired packs stay within the grace period, and for at least an
        // hour whatever it is, as do pack rows no manifest names, aged on
        // the cluster's clock: one whose writer's clock was two hours
        // behind (its nonce says two hours old) was written just now, and
        // stays (a compactor that trusted the nonce, or its own clock,
        // removed rows whose manifests were on their way).
        assert!(kept.retired_kept > done.compacted, "{kept:?}");
        assert_eq!((kept.compacted, kept.orphans_removed), (0, 0), "{kept:?}");
        admin
            .write_unnamed_pack_row(&[random_block(codec::RAW, SHA2_256, 600)], Duration::ZERO)
            .await
            .unwrap();
        let unnamed = [random_block(codec::RAW, SHA2_256, 700)];
        admin
            .write_unnamed_pack_row(&unnamed, Duration::from_secs(2 * 3600))
            .await
            .unwrap();
        let zero = CompactOptions {
            grace: Duration::ZERO,
            ..Default::default()
        };
        let floored = admin.compact_packs(&zero, |_| ()).await.unwrap();
        eprintln!("grace 0: {floored:?}");
        assert_eq!(floored.retired_removed, 0, "{floored:?}");
        assert_eq!(floored.retired_kept, kept.retired_kept, "{floored:?}");
        assert_eq!(floored.orphans_removed, 0, "{floored:?}");
        // Past the floor (a test's shortcut), they go.
        let past = CompactOptions {
            grace: Duration::ZERO,
            hooks: CompactHooks {
                ignore_min_age: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let removed = admin.compact_packs(&past, |_| ()).await.unwrap();
        eprintln!("past the floor: {removed:?}");
        assert_eq!(removed.retired_removed, kept.retired_kept, "{removed:?}");
        assert_eq!(removed.orphans_removed, 2, "{removed:?}");
        assert_eq!(removed.compacted, 0, "{removed:?}");
        let last = admin.compact_packs(&past, |_| ()).await.unwrap();
        assert_eq!(
            (
                last.retired_removed,
                last.orphans_removed,
                last.retired_kept
            ),
            (0, 0, 0),
            "{last:?}"
        );
        assert!(!fresh.has(&unnamed[0].0).await.unwrap());
        let after = GarageStore::new(new_connector("compact-after").await)
            .namespace(&name)
            .unwrap();
        assert_holds_exactly(&after, &live, &gone).await;
        let entries: Vec<_> = after.list_entries().try_collect().await.unwrap();
        let summary = after.verify_entries(entries, |_| ()).await.unwrap();
        assert!(summary.clean(), "verify: {summary:?}");
    });
}

/// Packs stored as Garage blocks (`pack_storage = "blocks"`, and every
/// pack written before packs became rows) keep working beside rows: a
/// connector writing rows reads, verifies (three replicas and a live ref
/// per pack) and removes them, and its own packs go to rows.
#[test]
fn store_packs_in_garage_blocks_work_beside_packs_in_rows() {
    run(async {
        let name = unique_ns("blockpacks");
        let old_conn = new_connector_with("blockpacks-old", |c| {
            c.with_pack_storage(PackStorage::Blocks)
        })
        .await;
        let old = GarageStore::new(old_conn.clone()).namespace(&name).unwrap();
        let put_together = |ns: Namespace, n: usize| async move {
            let blocks: Vec<_> = (0..n)
                .map(|i| random_block(codec::RAW, SHA2_256, 500 + i))
                .collect();
            futures::future::try_join_all(blocks.iter().map(|(c, d)| ns.put(c, d.clone())))
                .await
                .unwrap();
            blocks
        };
        let calls = old_conn.call_counters();
        let before = calls.get(Op::Put, Call::BlockPut);
        let first = put_together(old.clone(), 40).await;
        let old_packs = old.pack_stats().packs_written;
        assert!(old_packs >= 1, "{:?}", old.pack_stats());
        assert_eq!(
            calls.get(Op::Put, Call::BlockPut) - before,
            old_packs,
            "one Garage block per pack"
        );

        let new = GarageStore::new(new_connector("blockpacks-new").await)
            .namespace(&name)
            .unwrap();
        let second = put_together(new.clone(), 40).await;
        let new_packs = new.pack_stats().packs_written;
        assert!(new_packs >= 1, "{:?}", new.pack_stats());
        for (cid, data) in first.iter().chain(&second) {
            assert_eq!(new.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
        let entries: Vec<_> = new.list_entries().try_collect().await.unwrap();
        assert_eq!(entries.len(), 80);
        let storage_of = |set: &[(Cid, Bytes)]| -> Vec<Option<PackStorage>> {
            set.iter()
                .filter_map(|(c, _)| {
                    let (_, e) = entries.iter().find(|(mh, _)| mh == c.hash())?;
                    Some(e.packed.map(|p| p.storage))
                })
                .collect()
        };
        // Packed blocks name where their pack is (inline ones: nothing).
        assert!(storage_of(&first).contains(&Some(PackStorage::Blocks)));
        assert!(!storage_of(&first).contains(&Some(PackStorage::Rows)));
        assert!(storage_of(&second).contains(&Some(PackStorage::Rows)));
        assert!(!storage_of(&second).contains(&Some(PackStorage::Blocks)));
        let summary = new.verify_entries(entries.clone(), |_| ()).await.unwrap();
        assert!(summary.clean(), "verify: {summary:?}");
        let in_block = entries
            .iter()
            .find(|(_, e)| e.packed.is_some_and(|p| p.storage == PackStorage::Blocks))
            .unwrap();
        let report = new
            .verify_block(in_block.0, in_block.1.clone(), &mut Default::default())
            .await
            .unwrap();
        assert!(report.healthy(), "{report:?}");
        assert!(matches!(report.reference, RefState::Live(_)), "{report:?}");
        assert_eq!(report.replicas.len(), 3);

        for (cid, _) in first.iter().chain(&second) {
            assert!(new.delete(cid).await.unwrap(), "{cid}");
        }
        let removed = new.reclaim_packs(|_| ()).await.unwrap();
        assert_eq!(removed, old_packs + new_packs, "both kinds removed");
        let listed: Vec<_> = old.list().try_collect().await.unwrap();
        assert!(listed.is_empty(), "{} blocks listed", listed.len());
    });
}

/// The presence filter and the block cache of a long-running store follow
/// what other connectors do, and our own writes cost them no listing.
/// A block packed twice (a connector packed it again before its map knew
/// the first pack, as within the counters' lag) is deleted everywhere by
/// one delete that reaches only one copy: the delete's marker has the
/// other copy's holder delete it. A put after the delete lives.
#[test]
fn store_a_delete_reaches_packed_copies_the_deleter_does_not_know() {
    run(async {
        let name = unique_ns("twice");
        let b_store = GarageStore::with_filters(new_connector("twice-b").await);
        let b = b_store.namespace(&name).unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            b.filter_stats().unwrap().ready
        })
        .await;
        let a = GarageStore::new(new_connector("twice-a").await)
            .namespace(&name)
            .unwrap();
        // A's map is built now, before B's pack exists.
        let (probe, _) = random_block(codec::RAW, SHA2_256, 10);
        assert!(!a.has(&probe).await.unwrap());
        let blocks: Vec<_> = (0..40)
            .map(|i| random_block(codec::RAW, SHA2_256, 200 + i))
            .collect();
        for ns in [&b, &a] {
            futures::future::try_join_all(blocks.iter().map(|(c, d)| ns.put(c, d.clone())))
                .await
                .unwrap();
        }
        assert!(
            a.pack_stats().packs_written >= 1,
            "A packed the blocks again: {:?}",
            a.pack_stats()
        );
        // A block packed by both: in a pack of A's, and in no index entry
        // (so in a pack of B's).
        let mut twice = None;
        for (cid, data) in &blocks {
            let in_a = a
                .stored_entry(cid.hash())
                .await
                .unwrap()
                .is_some_and(|e| e.packed.is_some());
            if in_a && b.entry(cid.hash()).await.unwrap().0.is_none() {
                twice = Some((*cid, data.clone()));
                break;
            }
        }
        let (x, data) = twice.expect("a block packed by both connectors");
        a.delete_unsynced(&x).await.unwrap();
        eventually(
            Duration::from_secs(15),
            "B deletes its copy, older than the marker",
            || b.pack_stats().copies_killed >= 1,
        )
        .await;
        let fresh = || async {
            GarageStore::new(new_connector("twice-fresh").await)
                .namespace(&name)
                .unwrap()
        };
        let reader = fresh().await;
        assert_eq!(
            reader.get(&x).await.unwrap(),
            None,
            "a copy outlived the delete"
        );
        assert!(!b.has(&x).await.unwrap());
        for (cid, d) in blocks.iter().filter(|(c, _)| *c != x) {
            assert_eq!(reader.get(cid).await.unwrap().as_ref(), Some(d), "{cid}");
        }
        // Put again with others (so in a new pack, younger than the
        // marker): it stays, through the pollers' next steps.
        let more: Vec<_> = (0..8)
            .map(|i| random_block(codec::RAW, SHA2_256, 300 + i))
            .chain(std::iter::once((x, data.clone())))
            .collect();
        futures::future::try_join_all(more.iter().map(|(c, d)| b.put(c, d.clone())))
            .await
            .unwrap();
        let killed = b.pack_stats().copies_killed;
        tokio::time::sleep(garage_ipfs::store::COUNTER_LAG + Duration::from_secs(2)).await;
        assert_eq!(
            b.pack_stats().copies_killed,
            killed,
            "a later put was killed"
        );
        assert_eq!(fresh().await.get(&x).await.unwrap(), Some(data));
    });
}

#[test]
fn store_filter_and_cache_follow_other_connectors() {
    run(async {
        let name = unique_ns("follow");
        let filtered = GarageStore::with_filters(new_connector("follow").await);
        let ns = filtered.namespace(&name).unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;

        let rebuilds = ns.filter_stats().unwrap().rebuilds;
        let blocks: Vec<_> = (0..100)
            .map(|i| random_block(codec::RAW, SHA2_256, 500 + i))
            .collect();
        futures::future::try_join_all(blocks.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        // Past the attribution window and two more polls: by then every
        // put must be counted, and our own count must explain it.
        let settled = garage_ipfs::store::COUNTER_LAG + Duration::from_secs(2);
        let polls = ns.filter_stats().unwrap().polls;
        tokio::time::sleep(settled).await;
        let stats = ns.filter_stats().unwrap();
        assert!(
            stats.polls >= polls + 2,
            "the filter did not poll: {stats:?}"
        );
        // Our own count explains every shard's change once Garage has
        // propagated its counters, which it does within the 4-s window on
        // an idle machine (no shard listed). Starved of CPU (the suite
        // beside a build) a counter can take longer, and its shard is then
        // listed again: correct, one listing. A filter that listed every
        // shard our puts touched (the first design) lists about 80 here.
        assert!(
            stats.rebuilds <= rebuilds + 3,
            "our own puts made the filter list {} shards again",
            stats.rebuilds - rebuilds
        );

        // A cached block, deleted by another connector.
        let (cid, data) = random_block(codec::RAW, SHA2_256, 300_000);
        ns.put(&cid, data.clone()).await.unwrap();
        assert_eq!(ns.get(&cid).await.unwrap().as_ref(), Some(&data));
        let hits = filtered.cache_stats().hits;
        assert_eq!(ns.get(&cid).await.unwrap().as_ref(), Some(&data));
        assert!(
            filtered.cache_stats().hits > hits,
            "second get from the cache"
        );
        let other = store().await.namespace(&name).unwrap();
        assert!(other.delete(&cid).await.unwrap());
        let start = Instant::now();
        while ns.has(&cid).await.unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "a foreign delete not seen in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "foreign delete seen through filter and cache after {:?}",
            start.elapsed()
        );
        assert_eq!(ns.get(&cid).await.unwrap(), None);
        for (cid, data) in &blocks {
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data), "{cid}");
        }
    });
}

/// A restarted store's presence filter answers from the snapshot its
/// predecessor saved, after one counter read instead of a listing of the
/// namespace: every shard whose counters did not move is restored; the
/// shard another connector wrote to meanwhile says "maybe" until listed,
/// so nothing stored is ever answered absent.
#[test]
fn store_filter_restarts_ready_from_its_snapshot() {
    run(async {
        let name = unique_ns("restart");
        let conn = new_connector("restart").await;
        let first = GarageStore::with_filters(conn.clone());
        let ns = first.namespace(&name).unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;
        // Big blocks (index entries, in the filter) and small ones (packed,
        // in the pack map): the snapshot holds both.
        let blocks: Vec<_> = (0..300)
            .map(|i| random_block(codec::RAW, SHA2_256, 4000 + i))
            .chain((0..200).map(|i| random_block(codec::RAW, SHA2_256, 900 + i)))
            .collect();
        futures::future::try_join_all(blocks.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        assert!(ns.pack_stats().packs_written > 0, "{:?}", ns.pack_stats());
        // Once our puts are counted, the snapshot covers every shard.
        tokio::time::sleep(garage_ipfs::store::COUNTER_LAG + Duration::from_secs(2)).await;
        assert!(ns.persist_filter().await.unwrap(), "no snapshot written");
        // Until the counters settle (Garage propagates them to every node
        // in the background), each save differs from the last; once one is
        // unchanged, the snapshot covers the namespace as it stands.
        let settle = Instant::now();
        while ns.persist_filter().await.unwrap() {
            assert!(
                settle.elapsed() < Duration::from_secs(60),
                "counters never settled"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop(ns);
        drop(first);

        // While "down", another connector writes one block.
        let (foreign, foreign_data) = random_block(codec::RAW, SHA2_256, 5000);
        let other = store().await.namespace(&name).unwrap();
        other.put(&foreign, foreign_data).await.unwrap();
        // And small ones together (a pack, in a partition whose counters
        // then move: it must be listed, not restored).
        let foreign_small: Vec<_> = (0..16)
            .map(|i| random_block(codec::RAW, SHA2_256, 700 + i))
            .collect();
        futures::future::try_join_all(foreign_small.iter().map(|(c, d)| other.put(c, d.clone())))
            .await
            .unwrap();
        tokio::time::sleep(garage_ipfs::store::COUNTER_LAG).await;
        let foreign_shard = foreign.hash().digest()[0];

        // Restart: a new store over the same connector (same state directory).
        let start = Instant::now();
        let second = GarageStore::with_filters(conn.clone());
        let ns = second.namespace(&name).unwrap();
        while !ns.filter_stats().unwrap().ready {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready_in = start.elapsed();
        let stats = ns.filter_stats().unwrap();
        // Taken at once: the poller's rolling refresh lists partitions again
        // from its first poll on.
        let packs = ns.pack_stats();
        // The shard written meanwhile cannot be restored (its counters
        // moved; `has` below shows it was not: the block is found). A few
        // others may be listed too, if their counters moved again after
        // they seemed settled: that costs a listing, never a wrong answer.
        assert!(
            (200..=255).contains(&stats.restored_shards),
            "restored {} of 256 shards: {stats:?}",
            stats.restored_shards
        );
        // Absent blocks of restored shards are answered from memory at once.
        let hits = stats.hits;
        let absent: Vec<Cid> = (0..2000u32)
            .map(|i| random_block(codec::RAW, SHA2_256, 100 + (i as usize % 7)).0)
            .filter(|c| c.hash().digest()[0] != foreign_shard)
            .take(1000)
            .collect();
        for c in &absent {
            assert!(!ns.has(c).await.unwrap());
        }
        let answered = ns.filter_stats().unwrap().hits - hits;
        // From memory: those in restored shards (all but 0.01 % false
        // positives); those in shards still being listed may go to the index.
        assert!(
            answered >= 700,
            "only {answered} of 1000 absent lookups answered from memory"
        );
        // Nothing stored is answered absent: ours, and the foreign block
        // in the shard that was not restored.
        assert!(
            ns.has(&foreign).await.unwrap(),
            "the block written meanwhile"
        );
        for (cid, _) in blocks.iter().chain(&foreign_small) {
            assert!(ns.has(cid).await.unwrap(), "{cid}");
        }
        // The pack map came back from the snapshot too: the partitions
        // whose counters did not move were not listed.
        assert!(
            (200..=255).contains(&packs.partitions_restored),
            "restored {} of 256 manifest partitions: {packs:?}",
            packs.partitions_restored
        );
        assert_eq!(
            packs.partitions_listed + packs.partitions_restored,
            256,
            "{packs:?}"
        );
        eprintln!(
            "filter restored ({} of 256 shards, {} of 256 manifest partitions) and answering {ready_in:?} after the restart",
            stats.restored_shards, packs.partitions_restored
        );
    });
}

/// With a co-located node's data directory configured, a get reads the
/// block's file there (no cluster transfer); a copy that does not match the
/// CID, or no copy, falls back to the cluster and still returns the right
/// bytes.
#[test]
fn store_reads_a_colocated_replica_and_falls_back_on_doubt() {
    run(async {
        let node = &cluster().nodes[0];
        let config = cluster()
            .connector_config(
                state_dir("colocated"),
                garage_ipfs::harness::free_port().unwrap(),
            )
            .with_colocated_data_dirs(vec![node.data_dir.clone()]);
        let conn = garage_ipfs::Connector::connect(config).await.unwrap();
        let ns = GarageStore::new(conn.clone())
            .namespace(&unique_ns("colocated"))
            .unwrap();
        let blocks: Vec<_> = (0..3)
            .map(|i| random_block(codec::RAW, SHA2_256, 200_000 + i))
            .collect();
        for (cid, data) in &blocks {
            ns.put(cid, data.clone()).await.unwrap();
            wait_for_replicas(data).await;
        }
        let block_gets = || conn.call_counters().get(Op::Get, Call::BlockGet);

        // Node 1's copy, read from its file.
        let (cid, data) = &blocks[0];
        assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data));
        assert_eq!(conn.colocated_reads(), (1, 0));
        assert_eq!(block_gets(), 0, "a co-located read went to the cluster");

        // A corrupt local copy: the cluster answers, with the right bytes.
        let (cid, data) = &blocks[1];
        std::fs::write(replica_path(0, data), b"not the block").unwrap();
        assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data));
        assert_eq!(conn.colocated_reads(), (2, 0));
        let after_corrupt = block_gets();
        // Node 1's own copy may be tried first and refused by Garage.
        assert!(after_corrupt >= 1, "the corrupt copy was returned");

        // No local copy: the cluster answers.
        let (cid, data) = &blocks[2];
        std::fs::remove_file(replica_path(0, data)).unwrap();
        assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data));
        assert_eq!(conn.colocated_reads(), (2, 1));
        assert!(
            block_gets() > after_corrupt,
            "no cluster read without a local copy"
        );
        // Node 1's two copies stay damaged: no other test reads these
        // blocks, and a repair here would run beside the repair test's.
    });
}

/// The library sets TCP_NODELAY on its own connections to the storage
/// nodes (this test binary, unlike `garage-ipfs`, does not replace the C
/// library's `socket`): every TCP socket of this process connected to a
/// node's RPC address has the option, within the library's one-second
/// sweep, and a connector has such sockets.
#[test]
fn store_connector_sockets_to_nodes_have_nodelay() {
    use std::os::fd::{BorrowedFd, RawFd};
    run(async {
        let conn = new_connector("nodelay").await;
        let nodes: std::collections::HashSet<std::net::SocketAddr> =
            cluster().nodes.iter().map(|n| n.rpc).collect();
        // (sockets to a node, of which without the option)
        let sockets = || {
            let (mut to_nodes, mut without) = (0, 0);
            for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
                let Some(fd) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<RawFd>().ok())
                else {
                    continue;
                };
                // SAFETY: borrowed for two calls; a descriptor closed meanwhile
                // makes them fail, which skips it.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let sock = socket2::SockRef::from(&fd);
                let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else {
                    continue;
                };
                if nodes.contains(&peer) {
                    to_nodes += 1;
                    without += usize::from(matches!(sock.tcp_nodelay(), Ok(false)));
                }
            }
            (to_nodes, without)
        };
        eventually(
            Duration::from_secs(10),
            "every socket to a node has TCP_NODELAY",
            || {
                let (to_nodes, without) = sockets();
                to_nodes >= 3 && without == 0
            },
        )
        .await;
        drop(conn);
    });
}
