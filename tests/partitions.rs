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

/// A writer and a reader on a fresh namespace of the shared store.
struct Load {
    ns: garage_ipfs::store::Namespace,
    writer: Writer,
    reader: Reader,
}

impl Load {
    /// Starts them; returns once `warmup` blocks are acknowledged.
    async fn start(label: &str, warmup: usize) -> Self {
        let store = store().await;
        let ns = store.create_namespace(&unique_ns(label)).await.unwrap();
        let writer = Writer::start(ns.clone());
        let reader = Reader::start(ns.clone(), &writer);
        writer
            .wait_for_more(
                warmup,
                Duration::from_secs(60),
                "writes before the first cut",
            )
            .await;
        Self { ns, writer, reader }
    }

    /// After the last heal: waits for `more` acknowledgements, stops, and
    /// asserts that no read saw an acknowledged block absent or wrong, that
    /// all read back, that verify + repair leave three replicas and that
    /// every node runs. Prints the figures under `what`.
    async fn finish(self, what: &str, more: usize) -> WriterReport {
        let took = heal().await;
        self.writer
            .wait_for_more(more, Duration::from_secs(60), "writes after healing")
            .await;
        let written = self.writer.finish().await;
        let read = self.reader.finish().await;
        eprintln!(
            "{what}: {} acknowledged, {} refused ({} whole batches failed); reads {} correct, \
             {} failed; the connector saw every node {took:?} after healing",
            written.acked.len(),
            written.refused,
            written.batch_errors.len(),
            read.correct,
            read.errors
        );
        assert!(read.violations.is_empty(), "{:?}", read.violations);
        assert!(read.correct > 0, "no read succeeded: nothing was checked");
        assert_all_readable(&self.ns, &written.acked, "after healing").await;
        let (problems, repaired) = verify_repair_verify(&self.ns).await;
        eprintln!("{what}: verify found {problems} blocks short, repair wrote {repaired}");
        assert_nodes_running(what);
        written
    }
}

/// Node3 cut off from everyone (nodes and connector) for at least 20 s
/// while a writer and a reader run. Two nodes are a quorum, so writes go
/// on across the cut: at least two batches sent after it began are
/// acknowledged while it holds (three batches counted from the cut, as the
/// first may have been sent before). A request that picked node3 before Garage noticed the cut waits
/// out its deadline and fails (its blocks are refused, never acknowledged),
/// so the test does not ask that every write succeed. No read sees an
/// acknowledged block absent or wrong, and after healing verify + repair
/// leave three replicas.
#[test]
fn partition_one_node_cut_off_while_writing_loses_no_acknowledged_block() {
    run(async {
        let _serial = partition_serial().await;
        let load = Load::start("cut-node", 200).await;
        net().isolate(3).unwrap();
        let (cut_at, acked_at_cut) = (Instant::now(), load.writer.acked());
        load.writer
            .wait_for_more(96, Duration::from_secs(120), "writes with node3 cut off")
            .await;
        tokio::time::sleep_until((cut_at + Duration::from_secs(20)).into()).await;
        let during = load.writer.acked() - acked_at_cut;
        eprintln!(
            "node3 cut off {:.0?}: {during} blocks acknowledged during the cut",
            cut_at.elapsed()
        );
        load.finish("node3 cut off", 200).await;
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
        // Before any retry (which would overwrite it): whatever the failed
        // put left in the index must name a block that is stored.
        let read_since = Instant::now();
        let left = loop {
            match ns.entry(cid.hash()).await {
                Ok((entry, _)) => break entry.is_some(),
                Err(e) => {
                    assert!(
                        read_since.elapsed() < Duration::from_secs(60),
                        "the index is unreadable 60 s after healing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if left {
            assert_eq!(
                ns.get(&cid).await.unwrap(),
                Some(data.clone()),
                "the failed put left an index entry without its block"
            );
        }
        eprintln!("the failed put left an index entry: {left:?}");
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
        let load = Load::start("flapping", 100).await;
        for round in 0..12 {
            net().heal_all().unwrap();
            let (what, cuts) = nemesis(round);
            for (a, b) in cuts {
                net().cut(a, b).unwrap();
            }
            let before = load.writer.acked();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let acked = load.writer.acked() - before;
            eprintln!("round {round}: {what}: {acked} acknowledged");
        }
        load.finish("flapping", 100).await;
    });
}
