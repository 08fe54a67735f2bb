//! Node failures and refused joins, against a real three-node cluster.
//!
//! These tests stop nodes, so they run one at a time (`SERIAL`) on a
//! cluster of their own (this binary's), and each leaves it healthy.
#![cfg(feature = "integration-tests")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use futures::{StreamExt, TryStreamExt};
use garage_ipfs::cid::codec;
use garage_ipfs::harness::free_port;
use garage_ipfs::store::BlockStore;
use garage_ipfs::Connector;

/// Restarts nodes and waits until the cluster is healthy and `conn` sees
/// all three storage nodes again.
async fn restart_and_rejoin(nodes: &[usize], conn: &Connector) {
    cluster().restart_nodes(nodes).await.expect("nodes restart");
    sees_all_nodes(conn).await;
}

/// Puts, gets, has, list and delete all work with one node down, and what
/// they did holds once it is back: read through a connector that joins
/// afterwards (nothing cached from before).
#[test]
fn fault_one_node_down_everything_still_works() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let name = unique_ns("one-down");
        let ns = store.namespace(&name).unwrap();
        let (old_cid, old_data) = random_block(codec::RAW, 0x12, 70_000);
        ns.put(&old_cid, old_data.clone()).await.unwrap();
        let (doomed, doomed_data) = random_block(codec::RAW, 0x12, 50_000);
        ns.put(&doomed, doomed_data).await.unwrap();

        cluster().kill_node(2);
        let (cid, data) = random_block(codec::RAW, 0x12, 300_000);
        ns.put(&cid, data.clone())
            .await
            .expect("put with one node down");
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data.clone()));
        assert_eq!(ns.get(&old_cid).await.unwrap(), Some(old_data.clone()));
        assert!(ns.has(&cid).await.unwrap());
        assert!(ns.delete(&doomed).await.expect("delete with one node down"));
        assert!(!ns.has(&doomed).await.unwrap());
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(!listed.contains(doomed.hash()));

        restart_and_rejoin(&[2], store.connector()).await;
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data.clone()));
        let fresh = garage_ipfs::GarageStore::new(new_connector("one-down-after").await);
        let ns = fresh.namespace(&name).unwrap();
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data));
        assert_eq!(ns.get(&old_cid).await.unwrap(), Some(old_data));
        assert!(!ns.has(&doomed).await.unwrap(), "the delete did not hold");
        assert_eq!(ns.get(&doomed).await.unwrap(), None);
    });
}

#[test]
fn fault_two_nodes_down_put_fails_with_quorum_error() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let ns = store.namespace(&unique_ns("two-down")).unwrap();
        cluster().kill_node(1);
        cluster().kill_node(2);
        let (cid, data) = random_block(codec::RAW, 0x12, 10_000);
        let start = Instant::now();
        let err = ns
            .put(&cid, data.clone())
            .await
            .expect_err("put without quorum");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(15), "failing took {took:?}");
        assert!(
            matches!(
                err,
                garage_ipfs::store::Error::Cluster(garage_ipfs::garage::Error::Quorum(_))
            ),
            "not a quorum error: {err:?}"
        );

        restart_and_rejoin(&[1, 2], store.connector()).await;
        // No index entry claims the block that was never written.
        assert!(!ns.has(&cid).await.unwrap());
        assert_eq!(ns.get(&cid).await.unwrap(), None);
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        assert!(listed.is_empty());
        // And the store serves again.
        ns.put(&cid, data.clone()).await.unwrap();
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data));
    });
}

/// A listing never shows a block deleted while a node was down. The node
/// comes back holding the live index entry it missed the delete of; until
/// Garage's anti-entropy (its first full sync, 20 s after the node starts)
/// gives it the tombstone, a read quorum can pair it with a node that has the
/// tombstone. Storage nodes apply a range read's filter before the reader
/// merges their answers, so a read that asks them to leave tombstones out
/// gets the stale entry alone, and lists the deleted block.
#[test]
fn fault_listing_never_shows_a_block_deleted_while_a_node_was_down() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let ns = store.namespace(&unique_ns("list-after-down")).unwrap();
        let all = blocks(8);
        for (cid, data) in &all {
            ns.put(cid, data.clone()).await.unwrap();
        }
        let (gone, kept) = all.split_at(4);

        // Node 3 misses the deletes.
        cluster().kill_node(2);
        for (cid, _) in gone {
            assert!(ns.delete(cid).await.expect("delete with one node down"));
        }
        // Then node 1 goes down and node 3 comes back: every read quorum
        // now pairs node 2 (tombstones) with node 3 (stale entries). A
        // connector that joins now reaches node 3 at once (a connected one
        // may take a ping interval to notice it is back).
        cluster().kill_node(0);
        cluster().start_node(2).expect("node 3 starts");
        let back = Instant::now();
        let name = ns.name().to_string();
        let listed = async {
            let fresh = garage_ipfs::GarageStore::new(new_connector("list-after-down").await);
            let ns = fresh.namespace(&name).unwrap();
            loop {
                match ns.list().try_collect::<Vec<_>>().await {
                    Ok(l) => break Ok(l),
                    Err(e) if back.elapsed() < Duration::from_secs(15) => {
                        eprintln!("waiting for node 3: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => break Err(e),
                }
            }
        }
        .await;
        let took = back.elapsed();
        // The cluster whole again before any assertion.
        restart_and_rejoin(&[0], store.connector()).await;

        let listed =
            listed.unwrap_or_else(|e| panic!("no listing from nodes 2 and 3 within 15 s: {e}"));
        assert!(
            took < Duration::from_secs(18),
            "listed {took:?} after node 3 started: its anti-entropy may have healed it, so this proves nothing"
        );
        let listed: BTreeSet<_> = listed.iter().map(|mh| mh.to_bytes()).collect();
        let expected: BTreeSet<_> = kept.iter().map(|(c, _)| c.hash().to_bytes()).collect();
        let resurrected: Vec<_> = gone
            .iter()
            .filter(|(c, _)| listed.contains(&c.hash().to_bytes()))
            .map(|(c, _)| c.to_string())
            .collect();
        assert!(
            resurrected.is_empty(),
            "deleted blocks listed again ({took:?} after node 3 came back): {resurrected:?}"
        );
        assert_eq!(listed, expected, "listing with node 1 down");
    });
}

/// A put that missed its quorum can leave its index entry on the one node
/// that was up. A later put of the same block that finds that entry must
/// not acknowledge it as it is: it would be on one node, and lost to every
/// read quorum that does not include that node. Small blocks live in their
/// entry, so here the entry is the block.
#[test]
fn fault_a_put_after_a_put_that_missed_its_quorum_is_on_a_quorum() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let name = unique_ns("half-put");
        // The first put as the daemon makes it: its presence filter knows
        // the block is absent, so the put writes without reading first.
        let filtered = garage_ipfs::GarageStore::with_filters(new_connector("half-put-1").await);
        let ns = filtered.namespace(&name).unwrap();
        let (registered, data0) = random_block(codec::RAW, 0x12, 100);
        ns.put(&registered, data0).await.unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;
        let (cid, data) = random_block(codec::RAW, 0x12, 500);

        // Only node 3 up: the put fails, its entry left on node 3.
        cluster().kill_node(0);
        cluster().kill_node(1);
        let first = ns.put(&cid, data.clone()).await;

        // Node 1 back: quorums pair it with node 3. The put succeeds.
        cluster().start_node(0).expect("node 1 starts");
        let back = Instant::now();
        let second = async {
            let fresh = garage_ipfs::GarageStore::new(new_connector("half-put-2").await);
            let ns = fresh.namespace(&name).unwrap();
            loop {
                match ns.put(&cid, data.clone()).await {
                    Err(e) if back.elapsed() < Duration::from_secs(12) => {
                        eprintln!("waiting for node 1: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    r => break r,
                }
            }
        }
        .await;

        // Node 3 goes and node 2 comes back: quorums now pair nodes 1 and
        // 2. The acknowledged put must be on one of them.
        cluster().kill_node(2);
        cluster().start_node(1).expect("node 2 starts");
        let read = async {
            let fresh = garage_ipfs::GarageStore::new(new_connector("half-put-3").await);
            let ns = fresh.namespace(&name).unwrap();
            loop {
                match ns.get(&cid).await {
                    Err(e) if back.elapsed() < Duration::from_secs(17) => {
                        eprintln!("waiting for node 2: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    r => break r,
                }
            }
        }
        .await;
        let took = back.elapsed();
        // The cluster whole again before any assertion.
        restart_and_rejoin(&[2], store.connector()).await;

        assert!(first.is_err(), "a put with two nodes down succeeded");
        second.unwrap_or_else(|e| panic!("no put with nodes 1 and 3 up within 12 s: {e}"));
        let read = read.unwrap_or_else(|e| panic!("no read from nodes 1 and 2 within 17 s: {e}"));
        assert!(
            took < Duration::from_secs(19),
            "read {took:?} after node 1 started: its anti-entropy may have copied node 3's entry, so this proves nothing"
        );
        assert!(
            read == Some(data),
            "the acknowledged put is not on nodes 1 and 2: read {:?}",
            read.map(|d| d.len())
        );
    });
}

#[test]
fn join_wrong_rpc_secret_is_a_clear_error() {
    run(async {
        let _serial = serial().await;
        let mut config = cluster().connector_config(state_dir("badsecret"), free_port().unwrap());
        config.rpc_secret = Some(hex::encode([0x42u8; 32]).into());
        config.timeouts.connect_ms = 6_000;
        let err = Connector::connect(config)
            .await
            .err()
            .expect("join refused");
        let msg = err.to_string();
        assert!(msg.contains("rpc_secret"), "{msg}");
        assert!(msg.contains("could not join the cluster"), "{msg}");
    });
}

#[test]
fn join_wrong_replication_factor_is_refused_and_nodes_stay_up() {
    run(async {
        let _serial = serial().await;
        let pids: Vec<_> = (0..3).map(|i| cluster().node_pid(i).unwrap()).collect();
        for rf in [2, 5] {
            let config = cluster()
                .connector_config(state_dir("badrf"), free_port().unwrap())
                .with_replication_factor(rf);
            let err = Connector::connect(config)
                .await
                .err()
                .expect("join refused");
            let msg = err.to_string();
            assert!(msg.contains("replication factor mismatch"), "{msg}");
            assert!(msg.contains(&format!("configured with {rf}")), "{msg}");
            assert!(msg.contains("cluster runs with 3"), "{msg}");
        }
        // A peer advertising rf 5 would make nodes exit within about 10 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        for (i, pid) in pids.iter().enumerate() {
            assert_eq!(cluster().node_pid(i), Some(*pid), "node{} went down", i + 1);
        }
        cluster()
            .wait_healthy(Duration::from_secs(10))
            .await
            .expect("cluster healthy");
        // And the store still works.
        let ns = store().await.namespace(&unique_ns("after-rf")).unwrap();
        let (cid, data) = random_block(codec::RAW, 0x12, 1000);
        ns.put(&cid, data.clone()).await.unwrap();
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data));
    });
}

/// The presence filter follows another connector's put within a bounded
/// delay, and answers from memory only while it can follow the cluster:
/// with two nodes down its polls fail, and a second later every lookup,
/// absent, packed or our own, goes to the cluster and fails, rather than
/// answer from a memory that may be stale (docs/DESIGN.md, "Memory answers
/// only while it is followed"). Once the nodes are back it answers again.
#[test]
fn fault_without_quorum_lookups_stop_answering_from_memory() {
    run(async {
        let _serial = serial().await;
        let name = unique_ns("filter");
        let filtered = garage_ipfs::GarageStore::with_filters(new_connector("filter").await);
        let ns = filtered.namespace(&name).unwrap();
        // Put together, so that the batches are large enough for packs.
        let blocks: Vec<_> = (0..30)
            .map(|i| random_block(codec::RAW, 0x12, 1000 + i))
            .collect();
        futures::future::try_join_all(blocks.iter().map(|(c, d)| ns.put(c, d.clone())))
            .await
            .unwrap();
        let present: Vec<_> = blocks.into_iter().map(|(c, _)| c).collect();
        // A block stored on its own (not packed), put before the filter is
        // ready, so that the cache does not hold its entry.
        let (big, data) = random_block(codec::RAW, 0x12, 10_000);
        ns.put(&big, data).await.unwrap();
        eventually(Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;

        // A block put by another connector shows up within a bounded delay.
        let other = store().await.namespace(&name).unwrap();
        let (foreign, data) = random_block(codec::RAW, 0x12, 777);
        other.put(&foreign, data).await.unwrap();
        let start = Instant::now();
        loop {
            if ns.has(&foreign).await.unwrap() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "foreign put not seen in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "foreign put visible through the filter after {:?}",
            start.elapsed()
        );
        // Our own puts are visible at once (a lone small put is an inline
        // entry, which the cache holds once the filter is ready).
        let (own, data) = random_block(codec::RAW, 0x12, 778);
        ns.put(&own, data).await.unwrap();
        assert!(ns.has(&own).await.unwrap());
        let mut packed = None;
        for cid in &present {
            if ns
                .stored_entry(cid.hash())
                .await
                .unwrap()
                .unwrap()
                .packed
                .is_some()
            {
                packed = Some(*cid);
                break;
            }
        }
        let packed = packed.expect("30 concurrent small puts made no pack");

        cluster().kill_node(1);
        cluster().kill_node(2);
        // The filter's polls now fail: a second after the last complete
        // one began, memory stops answering (it cannot tell two dead nodes
        // from a partition that keeps us in the minority while the others
        // write). Every lookup then goes to the cluster and fails: never
        // a stale "absent", nor a "present" from the map or the cache.
        let before = ns.filter_stats().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Few: each failing read is retried twice (0.75 s).
        let absent: Vec<_> = (0..20)
            .map(|i| random_block(codec::RAW, 0x12, 10 + i).0)
            .collect();
        for cid in &absent {
            assert!(ns.has(cid).await.is_err(), "{cid}: answered without quorum");
            assert!(ns.get(cid).await.is_err(), "{cid}: answered without quorum");
        }
        let after = ns.filter_stats().unwrap();
        eprintln!(
            "without quorum: {} lookups sent to the cluster as the filter could not follow",
            after.stale - before.stale
        );
        assert_eq!(after.hits, before.hits, "no absent answered from memory");
        assert!(after.stale - before.stale >= 40, "{after:?}");
        assert!(
            ns.has(&big).await.is_err(),
            "own block: the cluster decides"
        );
        assert!(ns.has(&packed).await.is_err(), "packed: not from the map");
        assert!(ns.has(&own).await.is_err(), "inline: not from the cache");

        restart_and_rejoin(&[1, 2], filtered.connector()).await;
        // A deleted block: the index answers until the shard is rebuilt.
        assert!(ns.delete(&present[1]).await.unwrap());
        assert!(!ns.has(&present[1]).await.unwrap());
        for cid in &present[2..] {
            assert!(ns.has(cid).await.unwrap(), "{cid} lost by the filter");
        }
    });
}

/// `kill -9` of a node in the middle of a 2 000-block `put_many`: every
/// block the batch acknowledges reads back, the batch names exactly the
/// blocks it did not store, and verify + repair restore three replicas.
#[test]
fn fault_node_killed_during_put_many_loses_no_acknowledged_block() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let ns = store
            .create_namespace(&unique_ns("kill-node"))
            .await
            .unwrap();
        // Half of them small: a node dies mid-pack-write too.
        let all = mixed_blocks(2000);
        use garage_ipfs::garage::{Call, Op};
        let calls = store.connector().call_counters();
        let before = calls.get(Op::Put, Call::BlockPut);
        let batch = tokio::spawn({
            let (ns, all) = (ns.clone(), all.clone());
            async move { ns.put_many(all).await }
        });
        // Kill once about a quarter of the block writes went out.
        eventually(Duration::from_secs(60), "put_many under way", || {
            calls.get(Op::Put, Call::BlockPut) - before > 500
        })
        .await;
        assert!(!batch.is_finished(), "the batch ended before the kill");
        cluster().kill_node(2);
        let failed: Vec<cid::Cid> = match batch.await.unwrap() {
            Ok(()) => Vec::new(),
            Err(garage_ipfs::store::Error::Partial { failed, total, .. }) => {
                assert_eq!(total, 2000);
                failed.into_iter().map(|(c, _)| c).collect()
            }
            Err(e) => panic!("put_many failed as a whole: {e}"),
        };
        let acked: Vec<_> = all
            .iter()
            .filter(|(c, _)| !failed.contains(c))
            .cloned()
            .collect();
        eprintln!(
            "node3 killed mid-batch: {} acknowledged, {} reported failed",
            acked.len(),
            failed.len()
        );
        // Two nodes are a quorum: the writes after the kill go on too.
        assert!(
            acked.len() >= 500,
            "only {} of 2000 acknowledged",
            acked.len()
        );
        assert_all_readable(&ns, &acked, "one node down").await;

        restart_and_rejoin(&[2], store.connector()).await;
        assert_all_readable(&ns, &acked, "after restart").await;
        // Every acknowledged block is listed. What failed is named; it may
        // or may not be stored, but a listed block always reads back (no
        // index entry without its block).
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        let listed: std::collections::HashSet<Vec<u8>> =
            listed.iter().map(|mh| mh.to_bytes()).collect();
        for (cid, _) in &acked {
            assert!(listed.contains(&cid.hash().to_bytes()), "{cid} not listed");
        }
        for cid in &failed {
            if listed.contains(&cid.hash().to_bytes()) {
                assert!(
                    ns.get(cid).await.unwrap().is_some(),
                    "{cid}: listed, not readable"
                );
            }
        }
        let (problems, written) = verify_repair_verify(&ns).await;
        eprintln!("verify: {problems} blocks short of a replica; repair wrote {written}");
    });
}

/// A node's data directory wiped while it is down (a replaced disk):
/// Garage refuses to start on it (its marker file is gone) until the
/// operator removes the node's `data_layout` file, as Garage says; then the node comes back empty, reads never notice, verify counts
/// the missing replicas and repair puts every one back.
#[test]
fn fault_node_restarted_empty_gets_its_replicas_back() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let ns = store.create_namespace(&unique_ns("wiped")).await.unwrap();
        let all = blocks(60);
        ns.put_many(all.clone()).await.unwrap();
        for (_, d) in &all {
            wait_for_replicas(d).await;
        }
        cluster().kill_node(2);
        let data_dir = &cluster().nodes[2].data_dir;
        std::fs::remove_dir_all(data_dir).unwrap();
        std::fs::create_dir_all(data_dir).unwrap();
        let refused = cluster()
            .restart_nodes(&[2])
            .await
            .expect_err("starts on an empty disk");
        assert!(
            refused.to_string().contains("exited during start"),
            "{refused}"
        );
        let log = std::fs::read_to_string(cluster().dir.join("node3.log")).unwrap();
        assert!(log.contains("garage-marker"), "no word of the marker file");
        // What Garage's message tells the operator of a replaced disk.
        std::fs::remove_file(cluster().nodes[2].meta_dir.join("data_layout")).unwrap();
        restart_and_rejoin(&[2], store.connector()).await;

        assert_all_readable(&ns, &all, "node3 empty").await;
        // Garage's own resync may restore some copies (reads can queue
        // them), before verify or while it runs: verify finds at most the
        // copies still missing now, and at least one if any is.
        let missing = all
            .iter()
            .filter(|(_, d)| !replica_path(2, d).exists())
            .count() as u64;
        let (problems, written) = verify_repair_verify(&ns).await;
        eprintln!("wiped node: {missing} of 60 replicas missing before verify");
        assert!(missing > 0, "Garage restored every copy before verify ran");
        assert!(
            (1..=missing).contains(&problems) && written <= problems,
            "{missing} missing, verify found {problems}, repair wrote {written}"
        );
        for (_, d) in &all {
            assert_eq!(std::fs::read(replica_path(2, d)).unwrap(), d.to_vec());
        }
        eprintln!("wiped node: verify found {problems} blocks short, repair wrote {written}");
    });
}

/// Two of a block's three replicas corrupted on disk: verify reports the
/// corrupt copies, every read still returns the right bytes (checked
/// against the CID), and repair rewrites them. Garage quarantines a
/// corrupt copy when anything reads it and resyncs it from a good one, so
/// a read would hide it from a later verify: verify and reads each get
/// blocks of their own.
#[test]
fn fault_corrupt_replicas_reads_stay_correct_and_verify_reports_them() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let verified = store
            .create_namespace(&unique_ns("corrupt-verify"))
            .await
            .unwrap();
        let read = store
            .create_namespace(&unique_ns("corrupt-read"))
            .await
            .unwrap();
        let (for_verify, for_reads) = (blocks(5), blocks(5));
        verified.put_many(for_verify.clone()).await.unwrap();
        read.put_many(for_reads.clone()).await.unwrap();
        for (_, d) in for_verify.iter().chain(&for_reads) {
            wait_for_replicas(d).await;
        }
        for (_, d) in for_verify.iter().chain(&for_reads) {
            for node in [0, 1] {
                let path = replica_path(node, d);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[7] ^= 0x5a;
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let entries = verified.list_entries().try_collect().await.unwrap();
        let report = verified.verify_entries(entries, |_| ()).await.unwrap();
        assert_eq!((report.checked, report.lost), (5, 0), "{report:?}");
        // Every block is reported; each of its two bad copies is, unless
        // Garage healed the second while verify read the first.
        assert_eq!(report.checked - report.healthy, 5, "{report:?}");
        let reported = report.corrupt_replicas + report.missing_replicas;
        // At least the first bad copy of each block is caught corrupt; the
        // second is corrupt, or missing while Garage quarantines it, or
        // healed (then healthy).
        assert!(
            report.corrupt_replicas >= 5 && (5..=10).contains(&reported),
            "{report:?}"
        );
        // Reads: each may meet a corrupt copy and must skip it.
        assert_all_readable(&read, &for_reads, "two corrupt replicas").await;
        for ns in [&verified, &read] {
            verify_repair_verify(ns).await;
        }
        assert_all_readable(&verified, &for_verify, "after repair").await;
        assert_all_readable(&read, &for_reads, "after repair").await;
        eprintln!(
            "corrupt replicas: verify reported {reported} of 10 (5 of 5 blocks); \
             reads of 5 more blocks with 10 corrupt copies all correct"
        );
    });
}

/// Waits until the connector sees layout `version` as the only one in use
/// (the cluster finished moving to it).
async fn wait_layout_settled(conn: &Connector, version: u64) {
    let start = Instant::now();
    loop {
        let (versions, current) = (conn.layout_versions_in_use(), conn.layout_version());
        if current == version && versions == 1 {
            eprintln!("layout v{version} settled after {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "layout v{version} not settled in 240 s (current v{current}, {versions} in use)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A fourth node joins the layout, then leaves it, while a writer keeps
/// putting blocks and a reader reads what it acknowledged: no read sees an
/// acknowledged block absent or wrong, every acknowledged block reads back
/// after (puts may be refused while the layout moves: they are counted,
/// not bounded; an acknowledged one must never be lost),
/// verify + repair leave three replicas on the final layout, and the
/// blocks still read once the fourth node is gone.
#[test]
fn fault_layout_change_while_writing_loses_no_acknowledged_block() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let conn = store.connector();
        let ns = store.create_namespace(&unique_ns("layout")).await.unwrap();
        let writer = Writer::start(ns.clone());
        let reader = Reader::start(ns.clone(), &writer);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let c = cluster();
        let node4 = c.start_extra_node(4).await.expect("node4 starts");
        let v = c.layout_version().await.unwrap();
        c.garage_cli(
            0,
            &["layout", "assign", "-z", "dc4", "-c", "1G", &node4.node.id],
        )
        .unwrap();
        c.garage_cli(0, &["layout", "apply", "--version", &(v + 1).to_string()])
            .unwrap();
        wait_layout_settled(conn, v + 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.garage_cli(0, &["layout", "remove", &node4.node.id])
            .unwrap();
        c.garage_cli(0, &["layout", "apply", "--version", &(v + 2).to_string()])
            .unwrap();
        wait_layout_settled(conn, v + 2).await;

        let WriterReport {
            acked,
            refused,
            batch_errors,
        } = writer.finish().await;
        let read = reader.finish().await;
        eprintln!(
            "layout change: {} blocks acknowledged, {refused} puts refused; reads {} correct, \
             {} failed",
            acked.len(),
            read.correct,
            read.errors
        );
        assert!(read.violations.is_empty(), "{:?}", read.violations);
        assert!(read.correct > 0, "no read succeeded: nothing was checked");
        assert!(batch_errors.is_empty(), "batches failed: {batch_errors:?}");
        assert!(acked.len() >= 100, "the writer wrote too little to test");
        assert_all_readable(&ns, &acked, "after the layout changes").await;
        let (problems, written) = verify_repair_verify(&ns).await;
        eprintln!("layout change: verify found {problems} blocks short, repair wrote {written}");
        drop(node4);
        assert_all_readable(&ns, &acked, "with node4 gone").await;
    });
}

/// The daemon (`garage-ipfs serve`) killed with SIGKILL while clients put
/// blocks over the kubo RPC, then started again: every block it
/// acknowledged is served, and verify (after repair, which rewrites the
/// third replicas the killed daemon never sent) finds every block intact.
/// Its log, at debug level, never shows the rpc_secret or the write token,
/// and warns while the secret file is readable by others.
#[test]
fn fault_daemon_killed_mid_batch_then_restarted_loses_no_acknowledged_block() {
    use std::os::unix::fs::PermissionsExt;
    run(async {
        let _serial = serial().await;
        let c = cluster();
        let dir = state_dir("killed-daemon");
        let ns_name = unique_ns("killed");
        let secret_file = dir.join("rpc_secret");
        std::fs::write(&secret_file, &c.rpc_secret).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let token = format!("tok-{:016x}", rand::random::<u64>());
        let [gw, rpc, grpc] = [
            free_port().unwrap(),
            free_port().unwrap(),
            free_port().unwrap(),
        ];
        // The secret from a file (readable by others at first: the daemon
        // must warn), the state directory relative to the config.
        let mut t: toml::Table = toml::from_str(&c.daemon_config(
            std::path::Path::new("state"),
            free_port().unwrap(),
            [gw, rpc, grpc],
            &ns_name,
            &[],
        ))
        .unwrap();
        t.remove("rpc_secret");
        t.insert("rpc_secret_file".into(), "rpc_secret".into());
        let config = dir.join("connector.toml");
        std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
        let log = |n: usize| dir.join(format!("daemon-{n}.log"));
        let start = |n: usize| {
            let out = std::fs::File::create(log(n)).unwrap();
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"));
            cmd.args(["serve", "--config"])
                .arg(&config)
                .env("GARAGE_IPFS_WRITE_TOKEN", &token)
                .env("RUST_LOG", "debug")
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            ChildGuard::spawn(cmd)
        };
        let http = reqwest::Client::new();
        let ready = |http: reqwest::Client| async move {
            let url = format!("http://127.0.0.1:{rpc}/api/v0/version");
            eventually_async(Duration::from_secs(60), "the daemon answers", || {
                let (http, url) = (http.clone(), url.clone());
                async move { http.post(&url).send().await.is_ok() }
            })
            .await;
        };

        let daemon = start(1);
        ready(http.clone()).await;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (http, acked, token) = (http.clone(), acked.clone(), token.clone());
            clients.push(tokio::spawn(async move {
                loop {
                    // Half small (packed: the daemon dies mid-pack too).
                    let size = if rand::random::<bool>() {
                        1 + rand::random::<u16>() as usize % 3072
                    } else {
                        4096 + rand::random::<u16>() as usize
                    };
                    let (cid, data) = random_block(codec::RAW, 0x12, size);
                    let form = reqwest::multipart::Form::new().part(
                        "file",
                        reqwest::multipart::Part::bytes(data.to_vec()).file_name("b"),
                    );
                    let sent = http
                        .post(format!(
                            "http://127.0.0.1:{rpc}/api/v0/block/put?mhtype=sha2-256"
                        ))
                        .bearer_auth(&token)
                        .multipart(form)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => match r.text().await {
                            Ok(body) if body.contains(&cid.to_string()) => {
                                acked.lock().unwrap().push((cid, data));
                            }
                            // A success naming another block is a wrong answer.
                            Ok(body) => panic!("block/put of {cid} answered 200 with {body}"),
                            Err(_) => return, // cut mid-answer: the daemon is gone
                        },
                        Ok(r) => panic!("block/put answered {}", r.status()),
                        Err(_) => return, // the daemon is gone
                    }
                }
            }));
        }
        eventually(Duration::from_secs(60), "300 blocks acknowledged", || {
            acked.lock().unwrap().len() >= 300
        })
        .await;
        daemon.kill();
        for cl in clients {
            cl.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        let daemon = start(2);
        ready(http.clone()).await;
        for (cid, data) in &acked {
            let r = http
                .get(format!("http://127.0.0.1:{gw}/ipfs/{cid}?format=raw"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "acknowledged {cid} not served after restart"
            );
            assert_eq!(&r.bytes().await.unwrap(), data, "{cid}");
        }
        let store = store().await;
        let ns = store.namespace(&ns_name).unwrap();
        let (problems, written) = verify_repair_verify(&ns).await;
        eprintln!(
            "daemon killed after {} acknowledged puts: verify found {problems} blocks short, \
             repair wrote {written}",
            acked.len()
        );
        drop(daemon);

        let first = std::fs::read_to_string(log(1)).unwrap();
        let second = std::fs::read_to_string(log(2)).unwrap();
        for text in [&first, &second] {
            assert!(
                !text.contains(&c.rpc_secret),
                "the log shows the rpc_secret"
            );
            assert!(!text.contains(&token), "the log shows the write token");
        }
        assert!(
            first.contains("readable by other users"),
            "no warning:\n{first}"
        );
        assert!(!second.contains("readable by other users"));
    });
}

/// A `compact` killed with SIGKILL 0 to 150 ms after its first new pack,
/// while it works on the next, loses no live block and brings
/// back no deleted one; its lease refuses a second run until that run
/// breaks it, which then finishes the work; retired packs are kept at
/// least an hour whatever the grace.
#[test]
fn fault_compaction_killed_midway_loses_no_live_block() {
    use std::io::BufRead;
    run(async {
        let _serial = serial().await;
        let name = unique_ns("compact-kill");
        let store = garage_ipfs::GarageStore::new(new_connector("compact-kill").await);
        let ns = store.create_namespace(&name).await.unwrap();
        // A quarter of 3000 blocks of 1000 bytes stay live: about a dozen
        // new packs' worth.
        let blocks: Vec<_> = (0..3000)
            .map(|_| random_block(codec::RAW, 0x12, 1000))
            .collect();
        for chunk in blocks.chunks(200) {
            futures::future::try_join_all(chunk.iter().map(|(c, d)| ns.put(c, d.clone())))
                .await
                .unwrap();
        }
        let (live, gone): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 4 == 0);
        let live: Vec<_> = live.into_iter().map(|(_, b)| b).collect();
        let gone: Vec<_> = gone.into_iter().map(|(_, b)| b).collect();
        futures::stream::iter(gone.iter())
            .map(|(c, _)| {
                let ns = ns.clone();
                async move { assert!(ns.delete(c).await.unwrap(), "{c}") }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;

        let config = config_file("compact-kill");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"));
        cmd.arg("--config")
            .arg(&config)
            .args(["compact", "--namespace", &name])
            .env_remove("GARAGE_IPFS_NAMESPACE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = ChildGuard::spawn(cmd);
        let stdout = child.take_stdout().unwrap();
        let first =
            tokio::task::spawn_blocking(move || std::io::BufReader::new(stdout).lines().next())
                .await
                .unwrap();
        // Somewhere in the next group: reading its packs, writing the new
        // one, or retiring the old ones.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 150)).await;
        child.kill();
        let first = first.expect("compact printed nothing").unwrap();
        assert!(first.starts_with("wrote new pack 1:"), "{first}");

        let check = |label: &'static str| {
            let name = name.clone();
            async move {
                garage_ipfs::GarageStore::new(new_connector(label).await)
                    .namespace(&name)
                    .unwrap()
            }
        };
        assert_holds_exactly(&check("compact-kill-1").await, &live, &gone).await;
        // The killed run's lease holds (for two minutes): a second run is
        // refused, until told the first is dead.
        let refused = cli_err(&config, &["compact", "--namespace", &name]);
        assert!(
            refused.contains("another compaction") && refused.contains("--break-lease"),
            "{refused}"
        );
        let rest: serde_json::Value = serde_json::from_str(&cli_ok(
            &config,
            &["compact", "--namespace", &name, "--break-lease", "--json"],
        ))
        .unwrap();
        eprintln!("after the kill: {first}; the second run: {rest}");
        assert!(
            rest["compacted"].as_u64().unwrap() >= 1,
            "the killed run had finished: {rest}"
        );
        assert!(rest["retired_kept"].as_u64().unwrap() >= 1, "{rest}");
        assert!(rest["skipped"].as_array().unwrap().is_empty(), "{rest}");
        let after = check("compact-kill-2").await;
        assert_holds_exactly(&after, &live, &gone).await;
        let entries: Vec<_> = after.list_entries().try_collect().await.unwrap();
        let summary = after.verify_entries(entries, |_| ()).await.unwrap();
        assert!(summary.clean(), "verify: {summary:?}");
        // Retired packs are kept at least an hour, whatever the grace.
        let last: serde_json::Value = serde_json::from_str(&cli_ok(
            &config,
            &["compact", "--namespace", &name, "--grace", "0s", "--json"],
        ))
        .unwrap();
        assert_eq!(last["retired_removed"], 0, "{last}");
        assert!(last["retired_kept"].as_u64().unwrap() >= 2, "{last}");
        assert_eq!(last["compacted"], 0, "{last}");
        assert_holds_exactly(&check("compact-kill-3").await, &live, &gone).await;
    });
}
