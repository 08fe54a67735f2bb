//! What a local cluster's nodes hold on disk: block files and bytes over
//! every node's data directory, and Garage's block resync queue. Sampled
//! by the soak (and anything else that runs load on its own cluster).

use super::Cluster;
use serde::Serialize;

/// The cluster's block storage at one moment. Not part of the verdict:
/// how fast Garage collects deleted blocks is its own business (and
/// tunable: `garage worker set resync-tranquility` and
/// `resync-worker-count`), but a soak should show it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClusterDisk {
    /// Block files on all nodes together.
    pub block_files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Items in node1's block resync queue, from `garage worker list`
    /// (`None` if it did not answer).
    pub resync_queue: Option<u64>,
}

impl ClusterDisk {
    /// Walks every node's data directory and asks node1 for its queue.
    /// Blocking: a few seconds at a hundred thousand files.
    pub fn sample(cluster: &Cluster) -> Self {
        fn walk(dir: &std::path::Path, disk: &mut ClusterDisk) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path(), disk),
                    Ok(t) if t.is_file() && e.file_name() != "garage-marker" => {
                        disk.block_files += 1;
                        disk.bytes += e.metadata().map_or(0, |m| m.len());
                    }
                    _ => (),
                }
            }
        }
        let mut disk = Self::default();
        for node in &cluster.nodes {
            walk(&node.data_dir, &mut disk);
        }
        disk.resync_queue = cluster
            .garage_cli(0, &["worker", "list"])
            .ok()
            .and_then(|out| resync_queue(&out));
        disk
    }

    /// The resync queue for humans: its length, or `?`.
    pub fn resync_queue_text(&self) -> String {
        self.resync_queue.map_or("?".into(), |q| q.to_string())
    }
}

/// The queue column of the first block resync worker in `garage worker
/// list` (columns: TID, State, Name, Tranq, Done, Queue, ...).
fn resync_queue(worker_list: &str) -> Option<u64> {
    let line = worker_list
        .lines()
        .find(|l| l.contains("Block resync worker #1"))?;
    let mut after = line.split("#1").nth(1)?.split_whitespace();
    after.nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resync_queue_is_read_from_worker_list() {
        let busy = "TID  State  Name                                Tranq  Done  Queue  Errors\n\
                    1    Idle   Block resync queue deferred worker  -      -     94     -\n\
                    2    Busy   Block resync worker #1              2      -     64367  -\n\
                    3    Idle   Block resync worker #2              -      -     -      -\n";
        assert_eq!(super::resync_queue(busy), Some(64367));
        let idle = "2    Idle   Block resync worker #1              -      -     -      -\n";
        assert_eq!(super::resync_queue(idle), None);
        assert_eq!(super::resync_queue("error: cannot connect"), None);
    }
}
