//! What the fault and partition tests check: acknowledged blocks read
//! back, verify and repair leave three replicas, and a background writer
//! and reader to hold load while something breaks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use garage_ipfs::cid::codec;
use garage_ipfs::store::{BlockStore, Namespace};

use super::{cluster, eventually, random_block, store};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the binary's serial lock (tests that break the cluster run one at
/// a time), once the cluster is healthy and the shared connector sees
/// every node (an earlier test may have just restarted or cut some).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    // A test that failed while it had nodes down leaves them down: start
    // them again, so that one failure fails one test.
    for i in 0..3 {
        if cluster().node_pid(i).is_none() {
            eprintln!("node {i} was left down by an earlier test: starting it again");
            cluster().start_node(i).expect("node starts again");
        }
    }
    cluster()
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("cluster healthy");
    sees_all_nodes(store().await.connector()).await;
    guard
}

/// Waits until `conn` sees all three storage nodes up.
pub async fn sees_all_nodes(conn: &garage_ipfs::Connector) {
    eventually(
        Duration::from_secs(60),
        "connector sees all nodes up",
        || conn.storage_nodes_up() == 3,
    )
    .await;
}

/// Blocks of 4 to 12 KiB: stored outside the index, so every put writes a
/// block, a ref and an index entry.
pub fn blocks(n: usize) -> Vec<(Cid, Bytes)> {
    (0..n)
        .map(|i| random_block(codec::RAW, 0x12, 4096 + (i * 37) % 8192))
        .collect()
}

/// Blocks of both kinds, alternating: small ones (up to 3 KiB, written
/// many to a pack) and blocks of 4 to 12 KiB (stored on their own).
pub fn mixed_blocks(n: usize) -> Vec<(Cid, Bytes)> {
    (0..n)
        .map(|i| {
            let size = if i % 2 == 0 {
                1 + (i * 131) % 3072
            } else {
                4096 + (i * 37) % 8192
            };
            random_block(codec::RAW, 0x12, size)
        })
        .collect()
}

/// Every acknowledged block reads back intact; returns how many.
pub async fn assert_all_readable(
    ns: &impl BlockStore,
    acked: &[(Cid, Bytes)],
    when: &str,
) -> usize {
    for (cid, data) in acked {
        let got = ns
            .get(cid)
            .await
            .unwrap_or_else(|e| panic!("{when}: reading acknowledged {cid}: {e}"));
        assert_eq!(got.as_ref(), Some(data), "{when}: acknowledged {cid} lost");
    }
    acked.len()
}

/// Verifies every block of the namespace; repairs what is wrong (once) and
/// asserts that a second verify finds every block with all its replicas.
/// Returns (problems first found, replicas repair wrote).
pub async fn verify_repair_verify(ns: &Namespace) -> (u64, u64) {
    use garage_ipfs::store::{RepairSummary, VerifySummary};

    async fn verify(ns: &Namespace) -> VerifySummary {
        let entries = ns.list_entries().try_collect().await.unwrap();
        ns.verify_entries(entries, |_| ()).await.expect("verify")
    }
    // A node restarted (or reconnected) a moment ago may still look
    // connected over its dead connection; verify again until the connector
    // has reconnected.
    let start = Instant::now();
    let mut first = verify(ns).await;
    while first.unreachable_replicas > 0 && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        first = verify(ns).await;
    }
    assert_eq!(first.unreachable_replicas, 0, "a node stays unreachable");
    assert_eq!(
        first.lost,
        0,
        "blocks with no intact replica: {:?}",
        first.problems.first()
    );
    let mut repaired = RepairSummary::default();
    for report in &first.problems {
        ns.repair_block(report, false, &mut repaired).await;
    }
    assert!(repaired.failed.is_empty(), "repair failed: {repaired:?}");
    let second = verify(ns).await;
    assert!(
        second.clean(),
        "after repair, {} of {} blocks still have problems, such as {:?}",
        second.checked - second.healthy,
        second.checked,
        second.problems.first()
    );
    (first.checked - first.healthy, repaired.replicas_written)
}

/// Asserts that every storage node process still runs: nothing a test did
/// to the network or to us took one down.
pub fn assert_nodes_running(when: &str) {
    for (i, node) in cluster().nodes.iter().enumerate() {
        assert!(
            cluster().node_pid(i).is_some(),
            "{when}: node{} is down",
            node.index
        );
    }
}

/// What a [`Writer`] did.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Blocks acknowledged, in order.
    pub acked: Vec<(Cid, Bytes)>,
    /// Blocks refused (by a partial or a failed batch).
    pub refused: usize,
    /// Errors of batches that failed as a whole.
    pub batch_errors: Vec<String>,
}

/// Puts batches of 32 blocks (half of them packed) in the background
/// until finished. A batch
/// that fails as a whole counts all its blocks as refused: none of them
/// was acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Cid, Bytes)>>>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Writer {
    /// Starts writing into `ns`.
    pub fn start(ns: Namespace) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, acked) = (stop.clone(), acked.clone());
            async move {
                let (mut refused, mut errors) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let batch = mixed_blocks(32);
                    let failed: Vec<Cid> = match ns.put_many(batch.clone()).await {
                        Ok(()) => Vec::new(),
                        Err(garage_ipfs::store::Error::Partial { failed, .. }) => {
                            failed.into_iter().map(|(c, _)| c).collect()
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            batch.iter().map(|(c, _)| *c).collect()
                        }
                    };
                    refused += failed.len();
                    acked
                        .lock()
                        .unwrap()
                        .extend(batch.into_iter().filter(|(c, _)| !failed.contains(c)));
                }
                (refused, errors)
            }
        });
        Self { stop, acked, task }
    }

    /// How many blocks were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more blocks are acknowledged, for at most `limit`.
    pub async fn wait_for_more(&self, n: usize, limit: Duration, what: &str) {
        let target = self.acked() + n;
        eventually(limit, what, || self.acked() >= target).await;
    }

    /// Stops after the batch under way and reports.
    pub async fn finish(self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        let (refused, batch_errors) = self.task.await.expect("writer panicked");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        WriterReport {
            acked,
            refused,
            batch_errors,
        }
    }
}

/// What a [`Reader`] saw.
#[derive(Debug, Default)]
pub struct ReaderReport {
    /// Reads that returned the acknowledged bytes.
    pub correct: usize,
    /// Reads that failed with an error (allowed while the store cannot
    /// reach a quorum).
    pub errors: usize,
    /// Acknowledged blocks read as absent or with other bytes: must be 0.
    pub violations: Vec<String>,
}

/// Reads random acknowledged blocks of a [`Writer`] in the background.
pub struct Reader {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ReaderReport>,
}

impl Reader {
    /// Starts reading what `writer` acknowledged, from `ns`.
    pub fn start(ns: Namespace, writer: &Writer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = writer.acked.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut report = ReaderReport::default();
                while !stop.load(Ordering::Relaxed) {
                    let Some((cid, data)) = pick(&acked) else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    match ns.get(&cid).await {
                        Ok(Some(got)) if got == data => report.correct += 1,
                        Ok(Some(_)) => report.violations.push(format!("{cid}: other bytes")),
                        Ok(None) => report.violations.push(format!("{cid}: read as absent")),
                        Err(_) => {
                            report.errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                report
            }
        });
        Self { stop, task }
    }

    /// Stops and reports.
    pub async fn finish(self) -> ReaderReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("reader panicked")
    }
}

/// One of the acknowledged blocks, picked at random.
fn pick(acked: &Mutex<Vec<(Cid, Bytes)>>) -> Option<(Cid, Bytes)> {
    let acked = acked.lock().unwrap();
    (!acked.is_empty()).then(|| acked[rand::random_range(0..acked.len())].clone())
}
