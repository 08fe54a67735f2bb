//! Network partitions, against a real three-node cluster whose nodes each
//! run in a network namespace of their own (`harness::netns`). A cut link
//! drops packets silently, as a broken network does: unlike a killed node,
//! nothing refuses a connection, and open connections just stall.
//!
//! Needs root and iproute2's `ip`: without them, every test fails at
//! cluster start saying so. The tests run one at a time; each heals every
//! link when it ends, even when it fails.
#![cfg(feature = "integration-tests")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use garage_ipfs::cid::codec;
use garage_ipfs::harness::Peer;
use garage_ipfs::store::BlockStore;

/// Heals every link on drop, so a failing test leaves the network whole.
struct HealOnDrop;

impl Drop for HealOnDrop {
    fn drop(&mut self) {
        let _ = net().heal_all();
    }
}

/// The serial lock, on this binary's namespaced cluster.
async fn partition_serial() -> (tokio::sync::MutexGuard<'static, ()>, HealOnDrop) {
    namespaced_cluster();
    (serial().await, HealOnDrop)
}

/// Heals every link and waits until the shared connector sees every node.
async fn heal() -> Duration {
    let start = Instant::now();
    net().heal_all().expect("links heal");
    sees_all_nodes(store().await.connector()).await;
    start.elapsed()
}

/// Node3 cut off from everyone (nodes and connector) for 20 s while a
/// writer and a reader run: two nodes are a quorum, so every batch is
/// acknowledged across the cut, no read sees an acknowledged block absent
/// or wrong, and after healing verify + repair leave three replicas.
#[test]
fn partition_one_node_cut_off_while_writing_loses_no_acknowledged_block() {
    run(async {
        let _serial = partition_serial().await;
        let store = store().await;
        let ns = store
            .create_namespace(&unique_ns("cut-node"))
            .await
            .unwrap();
        let writer = Writer::start(ns.clone());
        let reader = Reader::start(ns.clone(), &writer);
        writer
            .wait_for_more(200, Duration::from_secs(60), "writes before the cut")
            .await;

        net().isolate(3).unwrap();
        let at_cut = writer.acked();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let during = writer.acked() - at_cut;
        let took = heal().await;
        writer
            .wait_for_more(200, Duration::from_secs(60), "writes after healing")
            .await;
        let written = writer.finish().await;
        let read = reader.finish().await;

        eprintln!(
            "node3 cut off 20 s: {during} blocks acknowledged during the cut, {} in all, \
             {} refused; reads {} correct, {} errors; reconnected {took:?} after healing",
            written.acked.len(),
            written.refused,
            read.correct,
            read.errors
        );
        assert!(
            written.batch_errors.is_empty() && written.refused == 0,
            "writes refused with a quorum reachable: {} blocks, {:?}",
            written.refused,
            written.batch_errors.first()
        );
        assert!(during >= 100, "only {during} blocks written across the cut");
        assert!(read.violations.is_empty(), "{:?}", read.violations);
        assert_all_readable(&ns, &written.acked, "after healing").await;
        let (problems, repaired) = verify_repair_verify(&ns).await;
        eprintln!("node3 cut off: verify found {problems} blocks short, repair wrote {repaired}");
        assert_nodes_running("after the cut");
    });
}

/// The connector cut off from two of the three nodes (which still see
/// each other): it has no quorum, so a put fails within the configured
/// timeouts with an error that says so, a read of a stored block returns
/// it or an error but never "absent", and once the links heal the same
/// store serves again by itself. The failed put leaves no index entry
/// without its block.
#[test]
fn partition_connector_in_minority_refuses_writes_then_serves_again() {
    run(async {
        let _serial = partition_serial().await;
        let store = store().await;
        let ns = store
            .create_namespace(&unique_ns("minority"))
            .await
            .unwrap();
        let (old_cid, old_data) = random_block(codec::RAW, 0x12, 20_000);
        ns.put(&old_cid, old_data.clone()).await.unwrap();

        net().cut(Peer::Host, Peer::Node(2)).unwrap();
        net().cut(Peer::Host, Peer::Node(3)).unwrap();
        let (cid, data) = random_block(codec::RAW, 0x12, 20_000);
        let start = Instant::now();
        let err = ns
            .put(&cid, data.clone())
            .await
            .expect_err("a put acknowledged without a quorum");
        let took = start.elapsed();
        let timeouts = &store.connector().config().timeouts;
        let bound = timeouts.block() + 2 * timeouts.rpc() + Duration::from_secs(10);
        eprintln!("put in the minority failed after {took:?}: {err}");
        assert!(took < bound, "failing took {took:?} (bound {bound:?})");
        let text = err.to_string();
        assert!(
            text.contains("quorum") || text.contains("timed out"),
            "the error says neither quorum nor timeout: {text}"
        );
        match ns.get(&old_cid).await {
            Ok(Some(got)) => assert_eq!(got, old_data, "a stored block read wrong"),
            Ok(None) => panic!("a stored block read as absent in the minority"),
            Err(e) => eprintln!("read in the minority: {e}"),
        }
        match ns.has(&old_cid).await {
            Ok(false) => panic!("has() denies a stored block in the minority"),
            Ok(true) => (),
            Err(e) => eprintln!("has in the minority: {e}"),
        }

        let took = heal().await;
        let start = Instant::now();
        eventually_async(Duration::from_secs(120), "a put after healing", || {
            let (ns, cid, data) = (ns.clone(), cid, data.clone());
            async move { ns.put(&cid, data).await.is_ok() }
        })
        .await;
        eprintln!(
            "minority healed: connector saw every node after {took:?}, put succeeded {:?} later",
            start.elapsed()
        );
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data));
        assert_eq!(ns.get(&old_cid).await.unwrap(), Some(old_data));
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        verify_repair_verify(&ns).await;
        assert_nodes_running("after the minority partition");
    });
}

/// The partitions of the flapping test, in turn.
fn nemesis(round: usize) -> (&'static str, Vec<(Peer, Peer)>) {
    use Peer::{Host, Node};
    let isolate = |n| {
        vec![
            (Node(n), Host),
            (Node(n), Node(n % 3 + 1)),
            (Node(n), Node((n + 1) % 3 + 1)),
        ]
    };
    match round % 6 {
        0 => ("node1 isolated", isolate(1)),
        1 => (
            "node2 and node3 cut from each other",
            vec![(Node(2), Node(3))],
        ),
        2 => ("connector cut from node2", vec![(Host, Node(2))]),
        3 => ("node3 isolated", isolate(3)),
        4 => (
            "connector cut from node1 and node3 (minority)",
            vec![(Host, Node(1)), (Host, Node(3))],
        ),
        _ => (
            "node1 cut from node2, connector from node3",
            vec![(Node(1), Node(2)), (Host, Node(3))],
        ),
    }
}

/// Links cut and healed in turn, every 4 s for 48 s, with one partition
/// without a quorum for the connector, while a writer and a reader run:
/// no acknowledged block is ever read absent or wrong, all read back after
/// the last heal, and verify + repair leave three replicas.
#[test]
fn partition_flapping_links_lose_no_acknowledged_block() {
    run(async {
        let _serial = partition_serial().await;
        let store = store().await;
        let ns = store
            .create_namespace(&unique_ns("flapping"))
            .await
            .unwrap();
        let writer = Writer::start(ns.clone());
        let reader = Reader::start(ns.clone(), &writer);
        writer
            .wait_for_more(100, Duration::from_secs(60), "writes before the first cut")
            .await;
        for round in 0..12 {
            net().heal_all().unwrap();
            let (what, cuts) = nemesis(round);
            for (a, b) in cuts {
                net().cut(a, b).unwrap();
            }
            let before = writer.acked();
            tokio::time::sleep(Duration::from_secs(4)).await;
            eprintln!(
                "round {round}: {what}: {} acknowledged",
                writer.acked() - before
            );
        }
        let took = heal().await;
        writer
            .wait_for_more(100, Duration::from_secs(60), "writes after the last heal")
            .await;
        let written = writer.finish().await;
        let read = reader.finish().await;

        eprintln!(
            "flapping: {} acknowledged, {} refused ({} whole batches failed); reads {} correct, \
             {} errors; reconnected {took:?} after the last heal",
            written.acked.len(),
            written.refused,
            written.batch_errors.len(),
            read.correct,
            read.errors
        );
        assert!(read.violations.is_empty(), "{:?}", read.violations);
        assert_all_readable(&ns, &written.acked, "after the last heal").await;
        let (problems, repaired) = verify_repair_verify(&ns).await;
        eprintln!("flapping: verify found {problems} blocks short, repair wrote {repaired}");
        assert_nodes_running("after flapping links");
    });
}
