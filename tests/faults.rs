//! Node failures and refused joins, against a real three-node cluster.
//!
//! These tests stop nodes, so they run one at a time (`SERIAL`) on a
//! cluster of their own (this binary's), and each leaves it healthy.
#![cfg(feature = "integration-tests")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use garage_ipfs::cid::codec;
use garage_ipfs::harness::free_port;
use garage_ipfs::store::BlockStore;
use garage_ipfs::Connector;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Restarts nodes and waits until the cluster is healthy and `conn` sees
/// all three storage nodes again.
async fn restart_and_rejoin(nodes: &[usize], conn: &Connector) {
    cluster().restart_nodes(nodes).await.expect("nodes restart");
    sees_all_nodes(conn).await;
}

async fn sees_all_nodes(conn: &Connector) {
    eventually(
        Duration::from_secs(30),
        "connector sees all nodes up",
        || conn.system.health().storage_nodes_ok == 3,
    )
    .await;
}

/// Takes the serial lock, once the shared connector sees every node (an
/// earlier test may have just restarted some).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    cluster()
        .wait_healthy(Duration::from_secs(30))
        .await
        .expect("cluster healthy");
    sees_all_nodes(store().await.connector()).await;
    guard
}

#[test]
fn fault_one_node_down_everything_still_works() {
    run(async {
        let _serial = serial().await;
        let store = store().await;
        let ns = store.namespace(&unique_ns("one-down")).unwrap();
        let (old_cid, old_data) = random_block(codec::RAW, 0x12, 70_000);
        ns.put(&old_cid, old_data.clone()).await.unwrap();

        cluster().kill_node(2);
        let (cid, data) = random_block(codec::RAW, 0x12, 300_000);
        ns.put(&cid, data.clone())
            .await
            .expect("put with one node down");
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data.clone()));
        assert_eq!(ns.get(&old_cid).await.unwrap(), Some(old_data));
        assert!(ns.has(&cid).await.unwrap());
        let listed: Vec<_> = ns.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 2);

        restart_and_rejoin(&[2], store.connector()).await;
        assert_eq!(ns.get(&cid).await.unwrap(), Some(data));
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
            err.to_string().contains("quorum"),
            "error does not say quorum: {err}"
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

/// The presence filter answers absent blocks from memory: with two nodes
/// down no cluster request can succeed, yet `has`/`get`/`get_size` of an
/// absent block answer at once, while a present block still needs the
/// cluster (the filter never claims presence on its own).
#[test]
fn fault_absent_lookups_answered_from_memory_without_quorum() {
    run(async {
        let _serial = serial().await;
        let name = unique_ns("filter");
        let filtered = garage_ipfs::GarageStore::with_filters(new_connector("filter").await);
        let ns = filtered.namespace(&name).unwrap();
        let mut present = Vec::new();
        for i in 0..30 {
            let (cid, data) = random_block(codec::RAW, 0x12, 1000 + i);
            ns.put(&cid, data).await.unwrap();
            present.push(cid);
        }
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
        // Our own puts are visible at once.
        let (own, data) = random_block(codec::RAW, 0x12, 778);
        ns.put(&own, data).await.unwrap();
        assert!(ns.has(&own).await.unwrap());

        cluster().kill_node(1);
        cluster().kill_node(2);
        let before = ns.filter_stats().unwrap();
        let absent: Vec<_> = (0..1000)
            .map(|i| random_block(codec::RAW, 0x12, 10 + i % 50).0)
            .collect();
        let t = Instant::now();
        let (mut answered, mut maybe) = (0, 0);
        for cid in &absent {
            match ns.has(cid).await {
                Ok(false) => {
                    answered += 1;
                    assert_eq!(ns.get(cid).await.unwrap(), None);
                    assert_eq!(ns.get_size(cid).await.unwrap(), None);
                }
                Ok(true) => panic!("{cid} reported present"),
                Err(_) => maybe += 1, // a false positive went to the cluster
            }
        }
        let took = t.elapsed();
        let after = ns.filter_stats().unwrap();
        eprintln!(
            "{answered} absent lookups answered without quorum in {took:?}, {maybe} false positives; \
             filter: {} entries, {} bytes",
            after.entries, after.memory_bytes
        );
        assert!(
            answered >= 970,
            "only {answered} of 1000 answered from memory"
        );
        assert_eq!(after.hits - before.hits, 3 * answered as u64);
        // Presence comes from the cluster or from the block cache (which
        // holds the entries of our puts made once the filter was ready, with
        // the inline bytes of small blocks), never from the filter alone.
        assert!(
            ns.has(&present[0]).await.is_err(),
            "presence must be confirmed by the cluster"
        );
        let (hits, _) = cache_counts(&filtered);
        assert!(ns.has(&own).await.unwrap(), "cached entry");
        assert_eq!(ns.get(&own).await.unwrap().map(|b| b.len()), Some(778));
        assert_eq!(cache_counts(&filtered).0, hits + 2);

        restart_and_rejoin(&[1, 2], filtered.connector()).await;
        // A deleted block: the index answers until the shard is rebuilt.
        assert!(ns.delete(&present[1]).await.unwrap());
        assert!(!ns.has(&present[1]).await.unwrap());
        for cid in &present[2..] {
            assert!(ns.has(cid).await.unwrap(), "{cid} lost by the filter");
        }
    });
}

fn cache_counts(store: &garage_ipfs::GarageStore) -> (u64, u64) {
    let s = store.cache_stats();
    (s.hits, s.misses)
}
