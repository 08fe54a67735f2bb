//! The driver: runs a workload's ops at a concurrency, times them, reads
//! the counters around each timed phase, and turns a run and its counters
//! into the phase's metrics.

use super::*;

/// Untimed ops before a timed phase of `n` ops.
pub(super) fn warmup(n: usize) -> usize {
    (n / 20).clamp(5, 50)
}

/// What one op did.
pub(super) struct Done {
    pub(super) bytes: u64,
    /// Ops it counts for (entries for a listing).
    pub(super) units: u64,
    /// Latency samples in ms, instead of the op's own duration.
    pub(super) samples: Option<Vec<f64>>,
}

impl Done {
    pub(super) fn op(bytes: usize) -> Self {
        Self {
            bytes: bytes as u64,
            units: 1,
            samples: None,
        }
    }
}

pub(super) type OpFn = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<Done>> + Send + Sync>;

/// What a timed run did.
#[derive(Default)]
pub(super) struct Run {
    pub(super) wall: Duration,
    pub(super) latencies_ms: Vec<f64>,
    pub(super) bytes: u64,
    pub(super) units: u64,
}

/// Runs ops `0..n`, `concurrency` at a time, each worker its own task;
/// stops at the first error.
pub(super) async fn drive(
    n: usize,
    concurrency: usize,
    bar: &ProgressBar,
    op: OpFn,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.clamp(1, n.max(1)))
        .map(|_| {
            let (op, next, failed, bar) = (op.clone(), next.clone(), failed.clone(), bar.clone());
            tokio::spawn(async move {
                let mut run = Run::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.load(Ordering::Relaxed) {
                        return Ok(run);
                    }
                    let t = Instant::now();
                    match op(i).await {
                        Ok(done) => {
                            match done.samples {
                                Some(samples) => run.latencies_ms.extend(samples),
                                None => run.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
                            }
                            run.bytes += done.bytes;
                            run.units += done.units;
                            bar.inc(1);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = Run::default();
    let mut error = None;
    for worker in workers {
        match worker.await.context("benchmark worker panicked")? {
            Ok(run) => {
                total.latencies_ms.extend(run.latencies_ms);
                total.bytes += run.bytes;
                total.units += run.units;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    total.wall = start.elapsed();
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// A phase's numbers from its run and the counters around it.
pub(super) fn compute_metrics(
    kind: SystemKind,
    run: &Run,
    before: &Snapshot,
    after: &Snapshot,
    moves_data: bool,
) -> Metrics {
    let ops = run.units.max(1) as f64;
    let seconds = run.wall.as_secs_f64().max(1e-9);
    let mut lat = run.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let per_op = |x: f64| x / ops;
    let cpu_us = |seconds: f64| seconds.max(0.0) * 1e6 / ops;
    let node_rpcs = (after.node_rpcs - before.node_rpcs).max(0.0);
    let client = match (before.client_requests, after.client_requests) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
        _ => None,
    };
    let (client_requests, cluster_rpcs, node_rpcs_per_op, s3_api, server_cpu) = match kind {
        SystemKind::Local => (None, Some(0.0), None, None, 0.0),
        SystemKind::Connector | SystemKind::Colocated | SystemKind::Floor => (
            client.map(per_op),
            client.map(|c| per_op(c + node_rpcs)),
            Some(per_op(node_rpcs)),
            None,
            cpu_us(after.node_cpu - before.node_cpu),
        ),
        SystemKind::S3 => (
            client.map(per_op),
            Some(per_op(node_rpcs)),
            Some(per_op(node_rpcs)),
            Some(per_op(
                (after.node_s3_requests - before.node_s3_requests).max(0.0),
            )),
            cpu_us(after.node_cpu - before.node_cpu),
        ),
    };
    Metrics {
        ops: run.units,
        seconds,
        ops_per_s: run.units as f64 / seconds,
        mib_per_s: moves_data.then(|| run.bytes as f64 / seconds / (1024.0 * 1024.0)),
        p50_ms: measure::percentile(&lat, 50.0),
        p99_ms: measure::percentile(&lat, 99.0),
        client_requests_per_op: client_requests,
        cluster_rpcs_per_op: cluster_rpcs,
        node_rpcs_per_op,
        s3_api_requests_per_op: s3_api,
        server_cpu_us_per_op: server_cpu,
        client_cpu_us_per_op: cpu_us(after.self_cpu - before.self_cpu),
    }
}

/// The timed phases: counters around a run, warm-up, the run itself.
impl Bench<'_> {
    /// Reads every counter a phase is measured by.
    pub(super) async fn snapshot(&self, sys: &System) -> anyhow::Result<Snapshot> {
        let mut node_rpcs = 0.0;
        let mut node_s3_requests = 0.0;
        for node in &self.cluster.nodes {
            let text = measure::scrape(node.admin).await?;
            node_rpcs += measure::sum_metric(&text, measure::RPC_COUNTER);
            node_s3_requests += measure::sum_metric(&text, measure::S3_COUNTER);
        }
        let mut node_ticks = 0;
        for i in 0..self.cluster.nodes.len() {
            let pid = self
                .cluster
                .node_pid(i)
                .with_context(|| format!("garage node{} is not running", i + 1))?;
            node_ticks += measure::process_cpu_ticks(pid)
                .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        }
        Ok(Snapshot {
            node_rpcs,
            node_s3_requests,
            node_cpu: node_ticks as f64 / self.ticks_per_sec,
            self_cpu: measure::self_cpu_seconds().context("getrusage failed")?,
            client_requests: sys.client_requests(),
        })
    }

    pub(super) fn next_label(&mut self, what: &str) -> String {
        self.phase += 1;
        format!("[{}/{}] {what}", self.phase, self.phases)
    }

    /// Runs `op` untimed (warm-up).
    pub(super) async fn untimed(
        &self,
        n: usize,
        concurrency: usize,
        op: OpFn,
    ) -> anyhow::Result<()> {
        if n > 0 {
            drive(n, concurrency, &ProgressBar::hidden(), op).await?;
        }
        Ok(())
    }

    /// The untimed warm-up (ops `0..warm`), then the timed phase (ops
    /// `warm..warm + n`) of one workload.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn warm_then_time(
        &self,
        label: &str,
        sys: &System,
        w: Workload,
        n: usize,
        warm: usize,
        concurrency: usize,
        op: impl Fn(usize) -> OpFn,
    ) -> anyhow::Result<Metrics> {
        self.untimed(warm, concurrency, op(0)).await?;
        self.timed(label, sys, n, concurrency, w.moves_data(), op(warm))
            .await
    }

    /// Pauses, then runs `op` timed, between two snapshots.
    pub(super) async fn timed(
        &self,
        label: &str,
        sys: &System,
        n: usize,
        concurrency: usize,
        moves_data: bool,
        op: OpFn,
    ) -> anyhow::Result<Metrics> {
        tokio::time::sleep(self.opts.pause).await;
        let bar = crate::tools::util::progress(Some(n as u64), false, label);
        let before = self.snapshot(sys).await?;
        let run = drive(n, concurrency, &bar, op).await;
        bar.finish_and_clear();
        let run = run?;
        let after = self.snapshot(sys).await?;
        let m = compute_metrics(sys.kind(), &run, &before, &after, moves_data);
        status(&format!(
            "{label}: {} ops in {:.2}s, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            m.ops, m.seconds, m.ops_per_s, m.p50_ms, m.p99_ms
        ));
        Ok(m)
    }

    /// One timed phase: a workload at a concurrency on one system.
    pub(super) async fn phase(
        &mut self,
        w: Workload,
        concurrency: usize,
        idx: usize,
    ) -> anyhow::Result<Metrics> {
        let sys = self.entries[idx].sys.clone();
        let label = self.next_label(&format!(
            "{} c{concurrency} {}",
            w.name(),
            sys.kind().name()
        ));
        let n = self.opts.ops(w, concurrency);
        // The blocks were just put by this process, so the connector's
        // cache would hold many of them: it is off except for get_hot
        // (popular content, which it is for) and the absent lookups (which
        // it never serves). Reads of the cold workloads come from the
        // cluster, like the S3 path's.
        sys.reset_cache(matches!(w, Workload::GetHot | Workload::HasAbsent));
        // The same access sequence for every system.
        let seed = ((w as u64) << 8) | concurrency as u64;
        let warm = warmup(n);
        match w {
            Workload::Put256k | Workload::Put1k => {
                let size = if w == Workload::Put256k {
                    BIG_BLOCK
                } else {
                    SMALL_BLOCK
                };
                let blocks = Arc::new(random_blocks(warm + n, size).await?);
                self.untimed(warm, concurrency, put_op(sys.clone(), blocks.clone(), 0))
                    .await?;
                let m = self
                    .timed(
                        &label,
                        &sys,
                        n,
                        concurrency,
                        w.moves_data(),
                        put_op(sys.clone(), blocks.clone(), warm),
                    )
                    .await?;
                let stored = &mut self.entries[idx].stored;
                let list = if size == BIG_BLOCK {
                    &mut stored.big
                } else {
                    &mut stored.small
                };
                list.extend(blocks.iter().map(|(cid, _)| *cid));
                stored.total += blocks.len() as u64;
                Ok(m)
            }
            Workload::Get256k | Workload::Get1k => {
                let big = w == Workload::Get256k;
                let size = if big { BIG_BLOCK } else { SMALL_BLOCK };
                let put = if big {
                    Workload::Put256k
                } else {
                    Workload::Put1k
                };
                let pool_len = {
                    let stored = &self.entries[idx].stored;
                    if big {
                        stored.big.len()
                    } else {
                        stored.small.len()
                    }
                };
                if pool_len == 0 {
                    // The put workload did not run: store as many blocks.
                    let count = self.opts.ops(put, 16);
                    let cids = fill(
                        &sys,
                        count,
                        size,
                        &format!("storing {count} blocks to read"),
                    )
                    .await?;
                    let stored = &mut self.entries[idx].stored;
                    stored.total += cids.len() as u64;
                    if big {
                        stored.big = cids
                    } else {
                        stored.small = cids
                    }
                }
                let stored = &self.entries[idx].stored;
                let cids = Arc::new(if big {
                    stored.big.clone()
                } else {
                    stored.small.clone()
                });
                let picks = Arc::new(uniform_picks(seed, warm + n, cids.len()));
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    get_op(sys.clone(), cids.clone(), picks.clone(), offset, size)
                })
                .await
            }
            Workload::GetHot => {
                let cids = self.hot_set(idx).await?;
                let picks = Arc::new(zipf_picks(seed, warm + n, cids.len(), ZIPF_S)?);
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    get_op(
                        sys.clone(),
                        cids.clone(),
                        picks.clone(),
                        offset,
                        SMALL_BLOCK,
                    )
                })
                .await
            }
            Workload::HasAbsent => {
                let cids = Arc::new(absent_cids(warm + n));
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    lookup_op(sys.clone(), cids.clone(), None, offset, None)
                })
                .await
            }
            Workload::HasPresent => {
                let cids = self.hot_set(idx).await?;
                let picks = Arc::new(uniform_picks(seed, warm + n, cids.len()));
                let size = Some(SMALL_BLOCK as u64);
                self.warm_then_time(&label, &sys, w, n, warm, concurrency, |offset| {
                    lookup_op(sys.clone(), cids.clone(), Some(picks.clone()), offset, size)
                })
                .await
            }
            Workload::List => {
                self.hot_set(idx).await?;
                let at_least = self.entries[idx].stored.total;
                self.timed(
                    &label,
                    &sys,
                    n,
                    concurrency,
                    w.moves_data(),
                    list_op(sys.clone(), at_least),
                )
                .await
            }
        }
    }

    /// The hot set of a system, stored on first use.
    pub(super) async fn hot_set(&mut self, idx: usize) -> anyhow::Result<Arc<Vec<Cid>>> {
        let want = self.opts.hot_set();
        let entry = &mut self.entries[idx];
        if entry.stored.hot.len() < want {
            let missing = want - entry.stored.hot.len();
            let what = format!(
                "storing the hot set of {} ({missing} blocks)",
                entry.sys.kind().name()
            );
            let cids = fill(&entry.sys, missing, SMALL_BLOCK, &what).await?;
            entry.stored.total += cids.len() as u64;
            entry.stored.hot.extend(cids);
        }
        Ok(Arc::new(entry.stored.hot.clone()))
    }
}
