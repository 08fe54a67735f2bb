//! The scale curve: puts and gets of small blocks with more and more
//! blocks stored, and the presence filter's build time at each size.

use super::*;

impl Bench<'_> {
    /// The scale curve: puts and gets with more and more blocks stored,
    /// and the presence filter's build time.
    pub(super) async fn scale_curve(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let mut systems: Vec<(Arc<System>, Vec<Cid>)> = Vec::new();
        if let Some(entry) = self.entry(SystemKind::Connector) {
            if let System::Connector { store, .. } = &*entry.sys {
                let ns = store.namespace(SCALE_NAMESPACE)?;
                wait_filter_ready(&ns).await?;
                let sys = System::Connector {
                    store: store.clone(),
                    ns,
                    colocated: false,
                };
                systems.push((Arc::new(sys), Vec::new()));
            }
        }
        if self.entry(SystemKind::S3).is_some() {
            self.s3_bucket(SCALE_BUCKET)?;
            systems.push((
                Arc::new(System::S3(self.s3_system(SCALE_BUCKET)?)),
                Vec::new(),
            ));
        }
        if systems.is_empty() {
            return Ok(());
        }
        let points = self.opts.scale_points();
        let (put_ops, get_ops) = self.opts.scale_ops();
        self.phase = 0;
        self.phases = points.len() * systems.len() * 2;
        let mut filter = FilterReport {
            namespace: SCALE_NAMESPACE.to_string(),
            ..Default::default()
        };
        for &point in &points {
            for (sys, stored) in systems.iter_mut() {
                if stored.len() < point {
                    let missing = point - stored.len();
                    let what = format!(
                        "scale: filling {} up to {point} blocks ({missing} more)",
                        sys.kind().name()
                    );
                    stored.extend(fill(sys, missing, SMALL_BLOCK, &what).await?);
                }
            }
            if let Some(conn) = self.conn.clone() {
                if systems
                    .iter()
                    .any(|(s, _)| s.kind() == SystemKind::Connector)
                {
                    let blocks = systems[0].1.len();
                    let p = filter_build(&conn, blocks).await?;
                    status(&format!(
                        "scale: presence filter and pack map of {blocks} blocks built in {:.0} ms, filter {} bytes ({:.2} per indexed block), map {} bytes ({:.1} per packed block, {} packed); after a restart answering in {:.0} ms ({} of 256 shards restored), every shard in {:.0} ms",
                        p.build_ms, p.memory_bytes, p.bytes_per_block, p.map_memory_bytes, p.map_bytes_per_block, p.packed, p.restart_ms, p.restored_shards, p.restart_all_ms
                    ));
                    filter.points.push(p);
                }
            }
            for (sys, stored) in systems.iter_mut() {
                let blocks_before = stored.len();
                let label = self.next_label(&format!(
                    "scale {point}: put_1k c{SCALE_CONCURRENCY} {}",
                    sys.kind().name()
                ));
                let warm = warmup(put_ops);
                let blocks = Arc::new(random_blocks(warm + put_ops, SMALL_BLOCK).await?);
                self.untimed(
                    warm,
                    SCALE_CONCURRENCY,
                    put_op(sys.clone(), blocks.clone(), 0),
                )
                .await?;
                let put = self
                    .timed(
                        &label,
                        sys,
                        put_ops,
                        SCALE_CONCURRENCY,
                        true,
                        put_op(sys.clone(), blocks.clone(), warm),
                    )
                    .await
                    .with_context(|| label.clone())?;
                stored.extend(blocks.iter().map(|(cid, _)| *cid));

                let label = self.next_label(&format!(
                    "scale {point}: get_1k c{SCALE_CONCURRENCY} {}",
                    sys.kind().name()
                ));
                let warm = warmup(get_ops);
                sys.reset_cache(false);
                let cids = Arc::new(stored.clone());
                let picks = Arc::new(uniform_picks(point as u64, warm + get_ops, cids.len()));
                self.untimed(
                    warm,
                    SCALE_CONCURRENCY,
                    get_op(sys.clone(), cids.clone(), picks.clone(), 0, SMALL_BLOCK),
                )
                .await?;
                let get = self
                    .timed(
                        &label,
                        sys,
                        get_ops,
                        SCALE_CONCURRENCY,
                        true,
                        get_op(sys.clone(), cids, picks, warm, SMALL_BLOCK),
                    )
                    .await
                    .with_context(|| label.clone())?;
                report.scale.push(ScalePoint {
                    blocks: blocks_before as u64,
                    system: sys.kind().name().to_string(),
                    put,
                    get,
                });
            }
        }
        if !filter.points.is_empty() {
            let dir = self.cluster.dir.join("bench-snapshots");
            for blocks in [100_000u64, 1_000_000] {
                let d = dir.clone();
                let (write, read, bytes) = tokio::task::spawn_blocking(move || {
                    crate::store::filter::snapshot_cost(blocks, &d)
                })
                .await??;
                status(&format!(
                    "scale: snapshot of {blocks} synthetic blocks in the filter and {blocks} more in packs: written in {write:.1?}, read back and the map rebuilt in {read:.1?}, {bytes} bytes"
                ));
                filter.snapshots.push(SnapshotCost {
                    blocks,
                    write_ms: write.as_secs_f64() * 1e3,
                    read_ms: read.as_secs_f64() * 1e3,
                    bytes,
                });
            }
            let report_filter = report.filter.get_or_insert_with(FilterReport::default);
            report_filter.namespace = filter.namespace;
            report_filter.points = filter.points;
            report_filter.snapshots = filter.snapshots;
        }
        Ok(())
    }
}

/// Stores `count` new small or big blocks, many at once (`put_many`
/// batches, several in flight), untimed; returns their CIDs.
pub(super) async fn fill(
    sys: &Arc<System>,
    count: usize,
    size: usize,
    what: &str,
) -> anyhow::Result<Vec<Cid>> {
    let t = Instant::now();
    let bar = crate::tools::util::progress(Some(count as u64), false, what);
    let batches: anyhow::Result<Vec<Vec<Cid>>> =
        futures::stream::iter((0..count).step_by(FILL_BATCH))
            .map(|start| {
                let len = FILL_BATCH.min(count - start);
                let (sys, bar) = (sys.clone(), bar.clone());
                async move {
                    let blocks = random_blocks(len, size).await?;
                    let cids: Vec<Cid> = blocks.iter().map(|(cid, _)| *cid).collect();
                    sys.put_many(blocks).await?;
                    bar.inc(len as u64);
                    Ok::<_, anyhow::Error>(cids)
                }
            })
            .buffer_unordered(FILL_IN_FLIGHT)
            .try_collect()
            .await;
    bar.finish_and_clear();
    let cids: Vec<Cid> = batches?.into_iter().flatten().collect();
    status(&format!("{what}: done in {:.1?}", t.elapsed()));
    Ok(cids)
}

/// Waits until a namespace's presence filter answers.
pub(super) async fn wait_filter_ready(ns: &crate::store::Namespace) -> anyhow::Result<()> {
    wait_filter(ns, "was not ready", |s| s.ready).await
}

/// Waits until a namespace's presence filter's stats satisfy `done`, at
/// most [`FILTER_READY_LIMIT`]; `pending` says what it still was.
async fn wait_filter(
    ns: &crate::store::Namespace,
    pending: &str,
    done: impl Fn(&crate::store::filter::FilterStats) -> bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let stats = ns
            .filter_stats()
            .context("the store keeps no presence filter for this namespace")?;
        if done(&stats) {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < FILTER_READY_LIMIT,
            "the presence filter of {:?} {pending} after {FILTER_READY_LIMIT:?}",
            ns.name()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Time from a fresh store's namespace handle to its presence filter
/// answering with no snapshot (a cold start: every shard listed), then
/// after a restart (from the snapshot the previous store saved), and the
/// filter's size.
///
/// The restart waits first until the counters have settled (Garage
/// propagates K2V counters in the background, so right after a fill they
/// still move, and a shard whose counters moved since it was saved is
/// listed, not restored) and the snapshot holds the settled state. It is
/// timed to the filter answering (restored shards answer, the others say
/// "maybe") and to every shard answering (the others listed).
pub(super) async fn filter_build(
    conn: &Arc<Connector>,
    blocks: usize,
) -> anyhow::Result<FilterPoint> {
    // Through a store without filters: a filtered one would start reading
    // the snapshot being deleted.
    GarageStore::new(conn.clone())
        .namespace(SCALE_NAMESPACE)?
        .forget_filter_snapshot()?;
    let t = Instant::now();
    let store = GarageStore::with_filters(conn.clone());
    let ns = store.namespace(SCALE_NAMESPACE)?;
    wait_filter_ready(&ns).await?;
    let build = t.elapsed();
    let stats = ns.filter_stats().unwrap_or_default();
    let map = ns.pack_stats();
    let settling = Instant::now();
    while ns.persist_filter().await? && settling.elapsed() < SETTLE_LIMIT {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    drop(ns);
    drop(store);
    let t = Instant::now();
    let store = GarageStore::with_filters(conn.clone());
    let ns = store.namespace(SCALE_NAMESPACE)?;
    wait_filter_ready(&ns).await?;
    let restart = t.elapsed();
    let restored = ns.filter_stats().unwrap_or_default().restored_shards;
    wait_filter(&ns, "still had shards to list", |s| s.maybe_shards == 0).await?;
    let restart_all = t.elapsed();
    Ok(FilterPoint {
        blocks: blocks as u64,
        build_ms: build.as_secs_f64() * 1e3,
        restart_ms: restart.as_secs_f64() * 1e3,
        restart_all_ms: restart_all.as_secs_f64() * 1e3,
        restored_shards: restored,
        entries: stats.entries,
        memory_bytes: stats.memory_bytes,
        bytes_per_block: stats.memory_bytes as f64 / (stats.entries.max(1)) as f64,
        packed: map.blocks,
        map_memory_bytes: map.memory_bytes,
        map_bytes_per_block: map.memory_bytes as f64 / (map.blocks.max(1)) as f64,
    })
}
