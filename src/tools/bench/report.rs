//! The benchmark's report: the JSON document and its human tables.

use std::collections::BTreeMap;

use serde::Serialize;

use super::SystemKind;
use crate::store::filter::FilterStats;

/// Results per workload, then per system.
pub type Results = BTreeMap<String, BTreeMap<String, Metrics>>;

/// Everything a run measured (`--json`).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The machine and the software.
    pub machine: serde_json::Value,
    /// How the run was set up.
    pub settings: serde_json::Value,
    /// At concurrency 16.
    pub workloads: Results,
    /// At concurrency 1.
    pub workloads_c1: Results,
    /// connector ops/s ÷ s3 ops/s at concurrency 16, per workload.
    pub ratios: BTreeMap<String, Option<f64>>,
    /// The same at concurrency 1.
    pub ratios_c1: BTreeMap<String, Option<f64>>,
    /// connector ops/s ÷ floor ops/s at concurrency 16, per workload
    /// (puts and gets: the floor runs nothing else).
    pub floor_ratios: BTreeMap<String, Option<f64>>,
    /// The same at concurrency 1.
    pub floor_ratios_c1: BTreeMap<String, Option<f64>>,
    /// colocated ops/s ÷ s3 ops/s at concurrency 16 (puts and gets).
    pub colocated_ratios: BTreeMap<String, Option<f64>>,
    /// The same at concurrency 1.
    pub colocated_ratios_c1: BTreeMap<String, Option<f64>>,
    /// Puts and gets of small blocks with more and more blocks stored.
    pub scale: Vec<ScalePoint>,
    /// Presence filter build times and sizes.
    pub filter: Option<FilterReport>,
}

/// One system in one timed phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Ops timed (blocks listed, for `list`).
    pub ops: u64,
    /// Wall time of the phase.
    pub seconds: f64,
    /// Throughput.
    pub ops_per_s: f64,
    /// Block bytes moved per second (`null` for lookups and listings).
    pub mib_per_s: Option<f64>,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests the client sent per op: connector RPCs, S3 HTTP requests
    /// (`null`: not counted, or none for `local`).
    pub client_requests_per_op: Option<f64>,
    /// RPCs inside the cluster per op: the connector's own plus those the
    /// nodes sent (`null` while the connector's are not counted).
    pub cluster_rpcs_per_op: Option<f64>,
    /// RPCs the nodes sent per op (their `rpc_request_counter`).
    pub node_rpcs_per_op: Option<f64>,
    /// S3 requests the nodes served per op (their `api_s3_request_counter`).
    pub s3_api_requests_per_op: Option<f64>,
    /// CPU time of the three garage processes per op, µs.
    pub server_cpu_us_per_op: f64,
    /// CPU time of the benchmark process per op, µs.
    pub client_cpu_us_per_op: f64,
}

/// One system at one point of the scale curve.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// Blocks stored before the timed puts.
    pub blocks: u64,
    /// The system.
    pub system: String,
    /// Puts of new 1 KiB blocks at concurrency 16.
    pub put: Metrics,
    /// Gets of stored 1 KiB blocks at concurrency 16.
    pub get: Metrics,
}

/// The presence filter's build time against the number of blocks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FilterReport {
    /// The namespace whose filter was built.
    pub namespace: String,
    /// One build per scale point.
    pub points: Vec<FilterPoint>,
    /// The counters of the `bench` namespace's filter at the end of the
    /// run (hits: absent lookups answered from memory).
    pub bench_namespace: Option<FilterStats>,
    /// A restart's snapshot work at sizes the run does not fill.
    pub snapshots: Vec<SnapshotCost>,
}

/// Writing and reading back the filter snapshot of a synthetic namespace.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCost {
    /// Blocks in the namespace.
    pub blocks: u64,
    /// Encoding and writing the file.
    pub write_ms: f64,
    /// Reading, checking and decoding it (what a restart waits for, plus
    /// one counter read).
    pub read_ms: f64,
    /// The file's size.
    pub bytes: u64,
}

/// One filter build.
#[derive(Debug, Clone, Serialize)]
pub struct FilterPoint {
    /// Blocks in the namespace.
    pub blocks: u64,
    /// From the namespace handle of a fresh store to the filter answering.
    pub build_ms: f64,
    /// The same after a restart: from the snapshot the previous store
    /// saved, plus one counter read (restored shards answer, the others
    /// say "maybe" until listed).
    pub restart_ms: f64,
    /// From the restart to every shard answering (restored or listed).
    pub restart_all_ms: f64,
    /// Shards the restart restored (of 256; the others were listed).
    pub restored_shards: u64,
    /// Multihashes in the filter.
    pub entries: u64,
    /// Memory of the filter.
    pub memory_bytes: u64,
    /// `memory_bytes / entries`.
    pub bytes_per_block: f64,
    /// Blocks in the pack map (packed blocks are not in the filter).
    pub packed: u64,
    /// Memory of the pack map.
    pub map_memory_bytes: u64,
    /// `map_memory_bytes / packed`.
    pub map_bytes_per_block: f64,
}

impl Report {
    /// Records connector ÷ s3 and connector ÷ floor throughput of a
    /// workload, at both concurrencies.
    pub fn fill_ratios(&mut self, workload: &str) {
        let ratio = |results: &Results, of: SystemKind, over: SystemKind| {
            let r = results.get(workload)?;
            let c = r.get(of.name())?.ops_per_s;
            let s = r.get(over.name())?.ops_per_s;
            (s > 0.0).then(|| c / s)
        };
        let w = workload.to_string();
        let (conn, coloc) = (SystemKind::Connector, SystemKind::Colocated);
        let (s3, floor) = (SystemKind::S3, SystemKind::Floor);
        let (c16, c1) = (&self.workloads, &self.workloads_c1);
        self.ratios.insert(w.clone(), ratio(c16, conn, s3));
        self.ratios_c1.insert(w.clone(), ratio(c1, conn, s3));
        self.floor_ratios.insert(w.clone(), ratio(c16, conn, floor));
        self.floor_ratios_c1
            .insert(w.clone(), ratio(c1, conn, floor));
        self.colocated_ratios
            .insert(w.clone(), ratio(c16, coloc, s3));
        self.colocated_ratios_c1.insert(w, ratio(c1, coloc, s3));
    }
}

/// Rows as a table, columns aligned: the first left, the others right.
pub fn format_table(rows: &[Vec<String>]) -> String {
    crate::tools::util::format_table(rows, crate::tools::util::Align::Right)
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{x:.2}")
    } else {
        // Three significant digits for small values (cache hits, lists).
        let digits = (2 - a.log10().floor() as i64).clamp(2, 7) as usize;
        format!("{x:.digits$}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "-".to_string())
}

fn ratio(x: Option<f64>) -> String {
    x.map(|r| format!("{r:.2}x"))
        .unwrap_or_else(|| "-".to_string())
}

/// The table of one workload: every system at concurrency 16 then 1.
pub fn workload_table(report: &Report, workload: &str, systems: &[SystemKind]) -> String {
    let mut rows = vec![[
        "system",
        "conc",
        "ops",
        "ops/s",
        "MiB/s",
        "p50 ms",
        "p99 ms",
        "req/op",
        "rpcs/op",
        "srv us/op",
        "cli us/op",
    ]
    .map(String::from)
    .to_vec()];
    for (conc, results) in [("16", &report.workloads), ("1", &report.workloads_c1)] {
        let Some(by_system) = results.get(workload) else {
            continue;
        };
        for kind in systems {
            let Some(m) = by_system.get(kind.name()) else {
                continue;
            };
            rows.push(vec![
                kind.name().to_string(),
                conc.to_string(),
                m.ops.to_string(),
                num(m.ops_per_s),
                opt(m.mib_per_s),
                num(m.p50_ms),
                num(m.p99_ms),
                opt(m.client_requests_per_op),
                opt(m.cluster_rpcs_per_op),
                num(m.server_cpu_us_per_op),
                num(m.client_cpu_us_per_op),
            ]);
        }
    }
    let mut out = format!("\n== {workload}\n{}", format_table(&rows));
    let get = |m: &BTreeMap<String, Option<f64>>| m.get(workload).copied().flatten();
    for (name, c16, c1) in [
        ("connector/s3", get(&report.ratios), get(&report.ratios_c1)),
        (
            "connector/floor",
            get(&report.floor_ratios),
            get(&report.floor_ratios_c1),
        ),
        (
            "colocated/s3",
            get(&report.colocated_ratios),
            get(&report.colocated_ratios_c1),
        ),
    ] {
        if c16.is_some() || c1.is_some() {
            out.push_str(&format!(
                "{name} ops/s: {} at c16, {} at c1\n",
                ratio(c16),
                ratio(c1)
            ));
        }
    }
    out
}

/// The scale curve's table.
pub fn scale_table(report: &Report) -> String {
    let mut rows = vec![[
        "blocks",
        "system",
        "put ops/s",
        "put p50/p99 ms",
        "put srv us/op",
        "get ops/s",
        "get p50/p99 ms",
        "get srv us/op",
    ]
    .map(String::from)
    .to_vec()];
    for p in &report.scale {
        rows.push(vec![
            p.blocks.to_string(),
            p.system.clone(),
            num(p.put.ops_per_s),
            format!("{} / {}", num(p.put.p50_ms), num(p.put.p99_ms)),
            num(p.put.server_cpu_us_per_op),
            num(p.get.ops_per_s),
            format!("{} / {}", num(p.get.p50_ms), num(p.get.p99_ms)),
            num(p.get.server_cpu_us_per_op),
        ]);
    }
    format!(
        "\n== scale curve: 1 KiB puts and gets at c16 with N blocks stored\n{}",
        format_table(&rows)
    )
}

/// The filter builds' table.
pub fn filter_table(filter: &FilterReport) -> String {
    let mut out = String::new();
    if !filter.points.is_empty() {
        let mut rows = vec![[
            "blocks",
            "build ms",
            "restart ms",
            "all shards ms",
            "restored",
            "entries",
            "memory bytes",
            "bytes/block",
            "packed",
            "map bytes",
            "map bytes/block",
        ]
        .map(String::from)
        .to_vec()];
        for p in &filter.points {
            rows.push(vec![
                p.blocks.to_string(),
                num(p.build_ms),
                num(p.restart_ms),
                num(p.restart_all_ms),
                p.restored_shards.to_string(),
                p.entries.to_string(),
                p.memory_bytes.to_string(),
                num(p.bytes_per_block),
                p.packed.to_string(),
                p.map_memory_bytes.to_string(),
                num(p.map_bytes_per_block),
            ]);
        }
        out.push_str(&format!(
            "\n== presence filter and pack map build (namespace {}, fresh store, no snapshot) and restart (from its snapshot, counters settled)\n{}",
            filter.namespace,
            format_table(&rows)
        ));
    }
    if !filter.snapshots.is_empty() {
        let mut rows = vec![["blocks", "write ms", "read ms", "bytes"]
            .map(String::from)
            .to_vec()];
        for s in &filter.snapshots {
            rows.push(vec![
                s.blocks.to_string(),
                num(s.write_ms),
                num(s.read_ms),
                s.bytes.to_string(),
            ]);
        }
        out.push_str(&format!(
            "\n== filter snapshot of a synthetic namespace (a restart reads it, then one counter read)\n{}",
            format_table(&rows)
        ));
    }
    out
}

/// The ratios of every workload, and the `bench` filter's counters.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    if report
        .ratios
        .values()
        .chain(report.ratios_c1.values())
        .chain(report.floor_ratios.values())
        .any(Option::is_some)
    {
        let mut rows = vec![[
            "workload",
            "/s3 c16",
            "/s3 c1",
            "/floor c16",
            "/floor c1",
            "colocated/s3 c16",
            "c1",
        ]
        .map(String::from)
        .to_vec()];
        let get = |m: &BTreeMap<String, Option<f64>>, w: &str| m.get(w).copied().flatten();
        for w in report.ratios.keys() {
            rows.push(vec![
                w.clone(),
                ratio(get(&report.ratios, w)),
                ratio(get(&report.ratios_c1, w)),
                ratio(get(&report.floor_ratios, w)),
                ratio(get(&report.floor_ratios_c1, w)),
                ratio(get(&report.colocated_ratios, w)),
                ratio(get(&report.colocated_ratios_c1, w)),
            ]);
        }
        out.push_str(&format!(
            "\n== connector ops/s over s3's and over the floor's; colocated over s3's\n{}",
            format_table(&rows)
        ));
    }
    if let Some(stats) = report.filter.as_ref().and_then(|f| f.bench_namespace) {
        out.push_str(&format!(
            "\npresence filter of namespace bench: {} absent lookups answered from memory, \
             {} false positives, {} rebuilds, {} entries in {} bytes\n",
            stats.hits, stats.false_positives, stats.rebuilds, stats.entries, stats.memory_bytes
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(ops_per_s: f64) -> Metrics {
        Metrics {
            ops: 100,
            seconds: 100.0 / ops_per_s,
            ops_per_s,
            mib_per_s: Some(1.5),
            p50_ms: 1.0,
            p99_ms: 9.5,
            client_requests_per_op: Some(4.0),
            cluster_rpcs_per_op: None,
            node_rpcs_per_op: Some(3.0),
            s3_api_requests_per_op: None,
            server_cpu_us_per_op: 1200.0,
            client_cpu_us_per_op: 80.0,
        }
    }

    fn sample() -> Report {
        let mut report = Report::default();
        for (results, c, s) in [
            (&mut report.workloads, 300.0, 150.0),
            (&mut report.workloads_c1, 40.0, 50.0),
        ] {
            let by_system = results.entry("put_256k".into()).or_default();
            by_system.insert("connector".into(), metrics(c));
            by_system.insert("s3".into(), metrics(s));
            by_system.insert("floor".into(), metrics(2.0 * s));
            by_system.insert("local".into(), metrics(5000.0));
        }
        report.fill_ratios("put_256k");
        report
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "machine",
            "settings",
            "workloads",
            "workloads_c1",
            "ratios",
            "ratios_c1",
            "floor_ratios",
            "floor_ratios_c1",
            "colocated_ratios",
            "colocated_ratios_c1",
            "scale",
            "filter",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let m = &v["workloads"]["put_256k"]["connector"];
        for key in [
            "ops_per_s",
            "mib_per_s",
            "p50_ms",
            "p99_ms",
            "client_requests_per_op",
            "cluster_rpcs_per_op",
            "server_cpu_us_per_op",
            "client_cpu_us_per_op",
            "ops",
        ] {
            assert!(m.get(key).is_some(), "metrics lack {key}");
        }
        assert_eq!(m["ops_per_s"], 300.0);
        assert!(m["cluster_rpcs_per_op"].is_null());
        assert_eq!(v["ratios"]["put_256k"], 2.0);
        assert_eq!(v["ratios_c1"]["put_256k"], 0.8);
        assert_eq!(v["floor_ratios"]["put_256k"], 1.0);
        assert_eq!(v["floor_ratios_c1"]["put_256k"], 0.4);
    }

    #[test]
    fn tables_show_every_row_and_the_ratio() {
        let report = sample();
        let table = workload_table(&report, "put_256k", &SystemKind::ALL);
        // Two rows, and the ratio lines over s3 and over the floor.
        assert_eq!(
            table.lines().filter(|l| l.starts_with("connector")).count(),
            4
        );
        assert_eq!(table.lines().filter(|l| l.starts_with("local")).count(), 2);
        assert!(
            table.contains("connector/s3 ops/s: 2.00x at c16, 0.80x at c1"),
            "{table}"
        );
        assert!(
            table.contains("connector/floor ops/s: 1.00x at c16, 0.40x at c1"),
            "{table}"
        );
        assert_eq!(table.lines().filter(|l| l.starts_with("floor")).count(), 2);
        let summary = summary(&report);
        assert!(
            summary.lines().any(|l| l
                .split_whitespace()
                .eq(["put_256k", "2.00x", "0.80x", "1.00x", "0.40x", "-", "-"])),
            "{summary}"
        );
        let t = format_table(&[
            vec!["a".into(), "1".into()],
            vec!["bbb".into(), "100".into()],
        ]);
        assert_eq!(t, "a      1\nbbb  100\n");
        assert_eq!(
            [0.0, 0.0016, 0.05, 1.234, 150.0, 12345.6].map(num),
            ["0.00", "0.00160", "0.0500", "1.23", "150.0", "12346"]
        );
    }
}
