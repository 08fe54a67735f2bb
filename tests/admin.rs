//! The `garage-ipfs` admin commands, end to end: the real binary against a
//! real three-node cluster, human and `--json` output, exit codes.
#![cfg(feature = "integration-tests")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use garage_ipfs::cid::{self as cidutil, codec};
use garage_ipfs::store::{BlockStore, MemBlockStore};
use ipld_core::ipld::Ipld;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Runs the CLI with stdout a pipe closed before it writes: exit code and
/// stderr.
fn cli_into_closed_pipe(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run garage-ipfs");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_namespace_block_and_status_commands() {
    run(async {
        let cfg = config_file("cli-basic");
        let ns = unique_ns("cli");
        let out = cli_ok(&cfg, &["namespace", "create", &ns]);
        assert!(out.contains(&format!("namespace {ns} ready")), "{out}");
        let list = json(&cli_ok(&cfg, &["namespace", "list", "--json"]));
        assert!(list
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == ns.as_str()));
        assert!(cli_ok(&cfg, &["namespace", "list"]).contains(&ns));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("block.bin");
        let data = random_bytes(10_000);
        std::fs::write(&file, &data).unwrap();
        let cid = cli_ok(&cfg, &["block", "put", file.to_str().unwrap(), "-n", &ns])
            .trim()
            .to_string();
        assert_eq!(
            cid,
            cidutil::compute(codec::RAW, 0x12, &data)
                .unwrap()
                .to_string()
        );
        let put = json(&cli_ok(
            &cfg,
            &[
                "block",
                "put",
                file.to_str().unwrap(),
                "-n",
                &ns,
                "--cid-codec",
                "dag-cbor",
                "--mhtype",
                "blake3",
                "--json",
            ],
        ));
        let cbor_cid = put["cid"].as_str().unwrap().to_string();
        assert_eq!(put["size"], 10_000);
        assert_eq!(cidutil::parse(&cbor_cid).unwrap().codec(), codec::DAG_CBOR);

        let out_file = dir.path().join("back.bin");
        cli_ok(
            &cfg,
            &[
                "block",
                "get",
                &cid,
                "-n",
                &ns,
                "-o",
                out_file.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read(&out_file).unwrap(), data.to_vec());
        assert!(cli_ok(&cfg, &["block", "stat", &cid, "-n", &ns]).contains("10000"));
        assert_eq!(
            json(&cli_ok(&cfg, &["block", "stat", &cid, "-n", &ns, "--json"]))["size"],
            10_000
        );
        let ls = cli_ok(&cfg, &["block", "ls", "-n", &ns]);
        assert_eq!(ls.lines().count(), 2, "{ls}");
        let ls = cli_ok(&cfg, &["block", "ls", "-n", &ns, "--json"]);
        assert!(ls.lines().all(|l| json(l)["size"] == 10_000), "{ls}");

        let info = json(&cli_ok(&cfg, &["namespace", "info", &ns, "--json"]));
        assert_eq!(
            (info["blocks"].as_u64(), info["bytes"].as_u64()),
            (Some(2), Some(20_000))
        );
        assert!(cli_ok(&cfg, &["namespace", "info", &ns]).contains("20000"));

        let status = json(&cli_ok(&cfg, &["status", "--json"]));
        assert_eq!(status["health"], "healthy");
        assert_eq!(status["replication_factor"], 3);
        assert_eq!(status["write_quorum"], 2);
        assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
        assert!(
            status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["up"] == true),
            "{status}"
        );
        let human = cli_ok(&cfg, &["status"]);
        assert!(human.contains("HEALTHY") && human.contains(&ns), "{human}");
        // Block counts come from Garage's K2V counters, which storage nodes
        // propagate in the background: allow them a moment.
        let mut mine = serde_json::Value::Null;
        for _ in 0..50 {
            let with_bytes = json(&cli_ok(&cfg, &["status", "--bytes", "--json"]));
            mine = with_bytes["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == ns.as_str())
                .cloned()
                .expect("namespace in status");
            if mine["blocks"] == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            (mine["blocks"].as_u64(), mine["bytes"].as_u64()),
            (Some(2), Some(20_000)),
            "{mine}"
        );

        // Output into a pipe whose reader has gone (`… | head`): a quiet
        // end, as a CLI stopped by SIGPIPE (which the program ignores, so
        // that a reset connection never kills the daemon).
        for args in [
            &["block", "get", &cid, "-n", &ns][..],
            &["block", "ls", "-n", &ns],
            &["namespace", "list", "--json"],
        ] {
            let (code, stderr) = cli_into_closed_pipe(&cfg, args);
            assert_eq!(code, Some(141), "{args:?}: {stderr}");
            assert_eq!(stderr, "", "{args:?}");
        }

        let rm = json(&cli_ok(&cfg, &["block", "rm", &cid, "-n", &ns, "--json"]));
        assert_eq!(rm[0]["removed"], true);
        let err = cli_err(&cfg, &["block", "get", &cid, "-n", &ns]);
        assert!(err.contains("is not stored in namespace"), "{err}");
        let err = cli_err(&cfg, &["block", "rm", &cid, "-n", &ns]);
        assert!(err.contains("were not stored"), "{err}");

        // Bad input.
        let err = cli_err(&cfg, &["block", "stat", "bafy-nope", "-n", &ns]);
        assert!(err.contains("malformed CID"), "{err}");
        let err = cli_err(&cfg, &["block", "ls", "-n", "no-such-namespace-x"]);
        assert!(
            err.contains("unknown namespace \"no-such-namespace-x\""),
            "{err}"
        );
        let err = cli_err(&cfg, &["namespace", "create", "bad/name"]);
        assert!(err.contains("invalid namespace name"), "{err}");

        // Delete: refused without --yes, done with it.
        let err = cli_err(&cfg, &["namespace", "delete", &ns]);
        assert!(err.contains("--yes"), "{err}");
        let del = json(&cli_ok(
            &cfg,
            &["namespace", "delete", &ns, "--yes", "--json"],
        ));
        assert_eq!(del["blocks_removed"], 1);
        assert!(!cli_ok(&cfg, &["namespace", "list"]).contains(&ns));
    });
}

#[test]
fn cli_car_round_trip_with_ipfs_car() {
    run(async {
        let cfg = config_file("cli-car");
        let ns = unique_ns("car");
        cli_ok(&cfg, &["namespace", "create", &ns]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, random_bytes(3 * 1024 * 1024 + 777)).unwrap();
        let car = dir.path().join("in.car");
        let root = ipfs_car_pack(&file, &car);

        let summary = json(&cli_ok(
            &cfg,
            &["car", "import", car.to_str().unwrap(), "-n", &ns, "--json"],
        ));
        assert_eq!(summary["roots"][0], root.to_string());
        let human = cli_ok(&cfg, &["car", "import", car.to_str().unwrap(), "-n", &ns]);
        assert!(human.contains(&format!("root {root}")), "{human}");

        let out = dir.path().join("out.car");
        cli_ok(
            &cfg,
            &[
                "car",
                "export",
                &root.to_string(),
                "-n",
                &ns,
                "-o",
                out.to_str().unwrap(),
            ],
        );
        let (a, b) = (MemBlockStore::new(), MemBlockStore::new());
        let sa = garage_ipfs::dag::import_car(&a, &std::fs::read(&car).unwrap()[..], |_| ())
            .await
            .unwrap();
        let sb = garage_ipfs::dag::import_car(&b, &std::fs::read(&out).unwrap()[..], |_| ())
            .await
            .unwrap();
        assert_eq!(sa.blocks, sb.blocks);
        assert_eq!(sa.bytes, sb.bytes);
        use futures::TryStreamExt;
        let mut la: Vec<_> = a.list().try_collect().await.unwrap();
        let mut lb: Vec<_> = b.list().try_collect().await.unwrap();
        la.sort_by_key(|m| m.to_bytes());
        lb.sort_by_key(|m| m.to_bytes());
        assert_eq!(la, lb, "the exported CAR's blocks differ from ipfs-car's");
    });
}

#[test]
fn cli_car_bad_input_is_refused() {
    run(async {
        let cfg = config_file("cli-badcar");
        let ns = unique_ns("badcar");
        cli_ok(&cfg, &["namespace", "create", &ns]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, random_bytes(2 * 1024 * 1024 + 5)).unwrap();
        let car = dir.path().join("in.car");
        let root = ipfs_car_pack(&file, &car);
        let bytes = std::fs::read(&car).unwrap();

        let truncated = dir.path().join("truncated.car");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let (ok, stdout, stderr) = cli(
            &cfg,
            &["car", "import", truncated.to_str().unwrap(), "-n", &ns],
        );
        assert!(!ok, "truncated CAR accepted: {stdout}");
        assert!(
            stderr.contains("invalid CAR") || stderr.contains("incomplete CAR"),
            "{stderr}"
        );
        assert!(
            !stdout.contains("root"),
            "a refused import reported a root: {stdout}"
        );

        let corrupt = dir.path().join("corrupt.car");
        let mut c = bytes.clone();
        let n = c.len();
        c[n - 100] ^= 0x55;
        std::fs::write(&corrupt, &c).unwrap();
        let err = cli_err(
            &cfg,
            &["car", "import", corrupt.to_str().unwrap(), "-n", &ns],
        );
        assert!(err.contains("does not match CID"), "{err}");

        let garbage = dir.path().join("garbage.car");
        std::fs::write(&garbage, b"this is not a CAR file").unwrap();
        let err = cli_err(
            &cfg,
            &["car", "import", garbage.to_str().unwrap(), "-n", &ns],
        );
        assert!(err.contains("invalid CAR"), "{err}");

        // The root was never acknowledged, and is not served as a whole DAG.
        let ns_store = store().await.namespace(&ns).unwrap();
        assert!(
            !ns_store.has(&root).await.unwrap(),
            "the root of a refused CAR is indexed"
        );
    });
}

#[test]
fn cli_verify_finds_corrupt_and_missing_replicas_and_repair_fixes_them() {
    run(async {
        let cfg = config_file("cli-verify");
        let ns_name = unique_ns("verify");
        let ns = store().await.create_namespace(&ns_name).await.unwrap();
        let mut blocks = Vec::new();
        for i in 0..6 {
            let (cid, data) = random_block(codec::RAW, 0x12, 20_000 + i);
            ns.put(&cid, data.clone()).await.unwrap();
            blocks.push((cid, data));
        }
        for (_, d) in &blocks {
            wait_for_replicas(d).await;
        }
        assert!(cli_ok(&cfg, &["verify", "-n", &ns_name]).contains("6 healthy"));

        // Flip bytes of one replica on node 2; remove another block's on node 3.
        let corrupt = replica_path(1, &blocks[0].1);
        let mut bytes = std::fs::read(&corrupt).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&corrupt, bytes).unwrap();
        std::fs::remove_file(replica_path(2, &blocks[1].1)).unwrap();

        let (ok, stdout, _) = cli(&cfg, &["verify", "-n", &ns_name, "--json"]);
        assert!(
            !ok,
            "verify exited 0 with a corrupt and a missing replica:\n{stdout}"
        );
        let report = json(&stdout);
        assert_eq!(report["checked"], 6);
        assert_eq!(report["corrupt_replicas"], 1, "{report}");
        assert_eq!(report["missing_replicas"], 1, "{report}");
        assert_eq!(report["under_replicated"], 2, "{report}");
        let human = cli_err(&cfg, &["verify", "-n", &ns_name]);
        assert!(human.contains("with problems"), "{human}");

        let dry = json(&cli_ok(
            &cfg,
            &["repair", "-n", &ns_name, "--dry-run", "--json"],
        ));
        assert_eq!(dry["repair"]["dry_run"], true);
        let out = json(&cli_ok(&cfg, &["repair", "-n", &ns_name, "--json"]));
        // Reading the corrupt copy made Garage quarantine it and queue its
        // own resync, which may restore it before repair looks (README):
        // repair writes what is still broken, the missing one at least.
        let written = out["repair"]["replicas_written"].as_u64().unwrap();
        assert!((1..=2).contains(&written), "{out}");
        let clean = json(&cli_ok(&cfg, &["verify", "-n", &ns_name, "--json"]));
        assert_eq!(clean["healthy"], 6, "{clean}");
        for (_, d) in &blocks[..2] {
            for n in 0..3 {
                assert_eq!(
                    std::fs::read(replica_path(n, d)).unwrap(),
                    d.to_vec(),
                    "node{}",
                    n + 1
                );
            }
        }
        // Idempotent.
        let again = json(&cli_ok(&cfg, &["repair", "-n", &ns_name, "--json"]));
        assert_eq!(again["repair"]["replicas_written"], 0);
        for (cid, data) in &blocks {
            assert_eq!(ns.get(cid).await.unwrap().as_ref(), Some(data));
        }
    });
}

fn cbor(links: &[cid::Cid], name: &str) -> (cid::Cid, Bytes) {
    let mut map = std::collections::BTreeMap::new();
    map.insert("name".to_string(), Ipld::String(name.into()));
    map.insert(
        "links".to_string(),
        Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
    (
        cidutil::compute(codec::DAG_CBOR, 0x12, &data).unwrap(),
        Bytes::from(data),
    )
}

#[test]
fn cli_gc_keeps_exactly_the_roots_dag() {
    run(async {
        let cfg = config_file("cli-gc");
        let ns_name = unique_ns("gc");
        let ns = store().await.create_namespace(&ns_name).await.unwrap();
        let leaves: Vec<_> = (0..4)
            .map(|i| random_block(codec::RAW, 0x12, 500 + i))
            .collect();
        let (mid, mid_data) = cbor(&[leaves[0].0, leaves[1].0], "mid");
        let (root, root_data) = cbor(&[mid, leaves[2].0], "root");
        let (other, other_data) = cbor(&[leaves[3].0], "other");
        let mut keep = vec![
            (root, root_data),
            (mid, mid_data),
            leaves[0].clone(),
            leaves[1].clone(),
            leaves[2].clone(),
        ];
        let drop = vec![(other, other_data), leaves[3].clone()];
        for (c, d) in keep.iter().chain(&drop) {
            ns.put(c, d.clone()).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.txt");
        std::fs::write(&roots, format!("# keep this DAG\n{root}\n")).unwrap();

        let dry = json(&cli_ok(
            &cfg,
            &[
                "gc",
                "-n",
                &ns_name,
                "--keep",
                roots.to_str().unwrap(),
                "--dry-run",
                "--json",
            ],
        ));
        let hashes = |cids: &mut dyn Iterator<Item = cid::Cid>| {
            let mut v: Vec<Vec<u8>> = cids.map(|c| c.hash().to_bytes()).collect();
            v.sort();
            v
        };
        let dropped = hashes(&mut drop.iter().map(|(c, _)| *c));
        let kept = hashes(&mut keep.iter().map(|(c, _)| *c));
        let would_remove = hashes(
            &mut dry["removed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| cidutil::parse(c.as_str().unwrap()).unwrap()),
        );
        assert_eq!(would_remove, dropped, "{dry}");
        assert_eq!(dry["reachable"], 5);
        for (c, _) in keep.iter().chain(&drop) {
            assert!(ns.has(c).await.unwrap(), "dry run removed {c}");
        }
        let out = cli_ok(
            &cfg,
            &["gc", "-n", &ns_name, "--keep", roots.to_str().unwrap()],
        );
        assert!(out.contains("2 removed"), "{out}");
        for (c, d) in &keep {
            assert_eq!(
                ns.get(c).await.unwrap().as_ref(),
                Some(d),
                "{c} was collected"
            );
        }
        for (c, _) in &drop {
            assert!(!ns.has(c).await.unwrap(), "{c} survived gc");
        }
        keep.clear();

        // A root the namespace does not hold is refused, nothing removed.
        let (absent, _) = random_block(codec::RAW, 0x12, 9);
        std::fs::write(&roots, format!("{absent}\n")).unwrap();
        let err = cli_err(
            &cfg,
            &["gc", "-n", &ns_name, "--keep", roots.to_str().unwrap()],
        );
        assert!(err.contains("is not stored in this namespace"), "{err}");
        let listed: Vec<_> = futures::TryStreamExt::try_collect(ns.list()).await.unwrap();
        let mut listed: Vec<Vec<u8>> = listed
            .iter()
            .map(|mh: &multihash::Multihash<64>| mh.to_bytes())
            .collect();
        listed.sort();
        assert_eq!(listed, kept, "a refused gc removed blocks");
    });
}

/// An operator's `garage block purge` of one block puts a delete marker on
/// its anchor: every other block under that anchor would lose its ref at the
/// next `garage repair block-refs`. Verify sees the dead anchor, repair moves
/// the refs to a live one, and the repair Garage recommends then keeps them.
#[test]
fn cli_repair_moves_refs_off_a_dead_anchor() {
    run(async {
        let cfg = config_file("cli-anchor");
        let ns_name = unique_ns("anchor");
        let ns = store().await.create_namespace(&ns_name).await.unwrap();
        // Two blocks under the same anchor (same shard of the block hash).
        let shard = |d: &Bytes| garage_util::data::blake2sum(d).as_slice()[0] % 16;
        let (victim, victim_data) = random_block(codec::RAW, 0x12, 4000);
        let mut neighbours = Vec::new();
        while neighbours.len() < 2 {
            let (c, d) = random_block(codec::RAW, 0x12, 4000);
            if shard(&d) == shard(&victim_data) {
                neighbours.push((c, d));
            }
        }
        ns.put(&victim, victim_data.clone()).await.unwrap();
        for (c, d) in &neighbours {
            ns.put(c, d.clone()).await.unwrap();
        }
        let hash = hex::encode(garage_util::data::blake2sum(&victim_data).as_slice());
        cluster()
            .garage_cli(0, &["block", "purge", "--yes", &hash])
            .expect("garage block purge");

        let (ok, stdout, _) = cli(&cfg, &["verify", "-n", &ns_name, "--json"]);
        assert!(!ok, "verify exited 0 with a dead anchor:\n{stdout}");
        let report = json(&stdout);
        // The two neighbours' refs sit under the dead anchor; the purge
        // also deleted the victim's own ref: three blocks, three new refs.
        assert_eq!(report["ref_problems"], 3, "{report}");
        let out = json(&cli_ok(&cfg, &["repair", "-n", &ns_name, "--json"]));
        assert_eq!(out["repair"]["refs_written"], 3, "{out}");
        // The repair Garage itself recommends: refs must survive it now.
        repair_to_completion("block-refs").await;
        for (c, d) in &neighbours {
            assert_refcount_with_deleted_refs(d, 1);
            assert_eq!(ns.get(c).await.unwrap().as_ref(), Some(d));
        }
        // The purged block's data outlives its refs by Garage's 10-minute
        // GC delay, so repair gave it a ref again: nothing was lost.
        let report = json(&cli_ok(&cfg, &["verify", "-n", &ns_name, "--json"]));
        assert_eq!(report["healthy"], 3, "{report}");
        assert_eq!(ns.get(&victim).await.unwrap(), Some(victim_data));
    });
}

/// `garage-ipfs bench` runs the four systems on its own cluster and writes
/// the JSON the issue specifies. Figures are not judged here (that is what
/// BENCHMARKS.md is for); the shape and the accounting are.
#[test]
fn cli_bench_quick_writes_its_json() {
    let (report, _) = run_on_own_cluster(&[
        "bench",
        "--quick",
        "--no-scale",
        "--workloads",
        "put_1k,get_1k,has_absent",
    ]);
    for table in ["workloads", "workloads_c1"] {
        for w in ["put_1k", "get_1k", "has_absent"] {
            // The floor (no index) and colocated (another read path):
            // puts and gets only.
            let puts_gets = if w == "has_absent" {
                &[][..]
            } else {
                &["floor", "colocated"][..]
            };
            for sys in ["connector", "s3", "local"].iter().chain(puts_gets) {
                let m = &report[table][w][sys];
                for key in [
                    "ops_per_s",
                    "p50_ms",
                    "p99_ms",
                    "cluster_rpcs_per_op",
                    "server_cpu_us_per_op",
                    "client_cpu_us_per_op",
                ] {
                    assert!(m[key].is_number(), "{table}.{w}.{sys}.{key} in {m}");
                }
                assert!(m["ops_per_s"].as_f64().unwrap() > 0.0);
            }
        }
    }
    assert!(report["workloads"]["has_absent"].get("floor").is_none());
    assert!(report["workloads"]["has_absent"].get("colocated").is_none());
    for w in ["put_1k", "get_1k", "has_absent"] {
        assert!(report["ratios"][w].as_f64().unwrap() > 0.0, "ratio of {w}");
    }
    for w in ["put_1k", "get_1k"] {
        assert!(
            report["floor_ratios"][w].as_f64().unwrap() > 0.0,
            "floor ratio of {w}"
        );
        // The floor is one bare transfer per op: a PutBlock or a GetBlock
        // (a get may try a second node whose copy is still on its way).
        let floor = &report["workloads"][w]["floor"];
        let per_op = floor["client_requests_per_op"].as_f64().unwrap();
        assert!((1.0..1.1).contains(&per_op), "{floor}");
        assert!(report["colocated_ratios"][w].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["machine"]["db_engine"], "lmdb", "Garage's default");
    // Absent lookups: everything the connector's phase cost the cluster
    // (its own calls, its filter's polling and the nodes' RPCs together)
    // stays under 0.05 per lookup; S3 makes one request per lookup. (That
    // the lookups themselves cost no more than the filter's false
    // positives is the `http_absent_...` and `kubo_absent_flood_...` tests'.)
    let absent = &report["workloads"]["has_absent"];
    assert!(absent["connector"]["cluster_rpcs_per_op"].as_f64().unwrap() < 0.05);
    assert_eq!(absent["s3"]["client_requests_per_op"].as_f64(), Some(1.0));
    assert!(absent["s3"]["cluster_rpcs_per_op"].as_f64().unwrap() >= 1.0);
}

/// Runs `garage-ipfs ARGS --dir DIR --json FILE`, a command that starts a
/// cluster of its own, in a fresh directory; asserts that it succeeded and
/// that it stopped the nodes it started. Returns its JSON report and its
/// stderr.
fn run_on_own_cluster(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (cluster, json_path) = (dir.path().join("cluster"), dir.path().join("report.json"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
        .args(args)
        .arg("--dir")
        .arg(&cluster)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("cannot run garage-ipfs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{} failed:\n{stderr}", args[0]);
    assert_no_node_runs_in(&cluster);
    let report = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    (report, stderr)
}

/// A command that starts its own cluster stopped the nodes it started: no
/// process runs with a config from its cluster directory.
fn assert_no_node_runs_in(cluster_dir: &std::path::Path) {
    let ours = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(cluster_dir.to_str().unwrap()))
            .count()
    };
    let start = std::time::Instant::now();
    while ours() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nodes of {} still run",
            cluster_dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The soak CI runs: 32 clients for 45 s over HTTP and gRPC. Nothing
/// acknowledged may be lost or answered wrongly, memory stays under the
/// bound, the report counts what was done, and the nodes are stopped.
#[test]
fn cli_soak_loses_nothing_under_mixed_load() {
    let (r, stderr) = run_on_own_cluster(&[
        "soak",
        "--clients",
        "32",
        "--seconds",
        "45",
        "--max-rss-mib",
        "512",
    ]);
    eprintln!(
        "{}",
        stderr
            .lines()
            .filter(|l| l.starts_with("soak"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["final_lost"].as_array().unwrap().len(), 0, "{r}");
    for op in ["put", "get", "has", "delete"] {
        for surface in ["http", "grpc"] {
            let ok = r["ops"][format!("{surface} {op}")]["ok"]
                .as_u64()
                .unwrap_or(0);
            assert!(ok > 0, "no successful {surface} {op}: {r}");
        }
    }
    // A healthy cluster under this load answers every request: the bound
    // on errors is zero (`--max-errors` defaults to 0).
    assert_eq!(r["errors_total"], 0, "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "{r}");
    // Every acknowledged put not acknowledged deleted is held at the end
    // (no delete failed: no error), and each of them was read back from
    // the cluster through a fresh connector and hashed to its CID.
    let puts = r["puts_acknowledged"].as_u64().unwrap();
    let deletes = r["deletes_acknowledged"].as_u64().unwrap();
    assert_eq!(r["final_held"].as_u64().unwrap(), puts - deletes, "{r}");
    assert_eq!(
        r["final_present_verified"].as_u64().unwrap(),
        puts - deletes,
        "{r}"
    );
    assert!(r["final_deleted_checked"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["final_absent_verified"], r["final_deleted_checked"],
        "{r}"
    );
    assert!(r["peak_rss_bytes"].as_u64().unwrap() <= 512 << 20);
}

/// Stops what `garage-ipfs dev` started, also when the test panics: the
/// dev process (SIGINT, as Ctrl-C; SIGKILL when the guard drops) and then
/// the dev cluster's nodes, which outlive it by design (`cluster down`).
struct DevRun {
    dev: ChildGuard,
    cluster: std::path::PathBuf,
}

impl Drop for DevRun {
    fn drop(&mut self) {
        self.dev
            .signal_and_wait(libc::SIGINT, Duration::from_secs(30));
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
            .args(["cluster", "down", "--dir"])
            .arg(&self.cluster)
            .output();
    }
}

/// The README's first command with kubo: `garage-ipfs dev --kubo` brings up
/// the dev cluster, the daemon and a kubo node (made on first use) whose
/// blocks live in a namespace of that cluster. A file added through the
/// node reads back identical, and every block of its DAG is in the node's
/// namespace as our own CLI lists it. Ctrl-C stops the daemon and the kubo
/// node (its API stops answering); `cluster down` then stops the nodes.
#[test]
fn cli_dev_with_kubo_runs_a_kubo_node_whose_blocks_live_in_the_cluster() {
    use garage_ipfs::harness::kubo::{kubo_binary, Flavour, KuboNode};
    use std::io::BufRead;

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = dir.path().join("dev");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"));
    cmd.args(["dev", "--kubo", "--kubo-profile", "test", "--dir"])
        .arg(&cluster)
        .stdout(std::process::Stdio::piped());
    let mut dev = DevRun {
        dev: ChildGuard::spawn(cmd),
        cluster: cluster.clone(),
    };
    let stdout = dev.dev.take_stdout().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("dev| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next_line = |what: &str| -> String {
        let line = lines
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("dev printed no {what}; it printed:\n{}", seen.join("\n")));
        seen.push(line.clone());
        line
    };
    // "kubo node <peer id> on the dev cluster (repo <dir>):", then its API.
    let peer = loop {
        let line = next_line("kubo node line");
        if let Some(rest) = line.strip_prefix("kubo node ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let api = loop {
        let line = next_line("kubo API line");
        if let Some(url) = line.trim().strip_prefix("API") {
            break url.trim().to_string();
        }
    };
    assert!(api.starts_with("http://127.0.0.1:"), "kubo API {api}");

    let node = KuboNode::new(kubo_binary(Flavour::Garage).unwrap(), cluster.join("kubo"));
    let data = random_bytes(3 << 20);
    let file = dir.path().join("file.bin");
    std::fs::write(&file, &data).unwrap();
    let root = node.run(&["add", "-Q", file.to_str().unwrap()]).unwrap();
    let root = root.trim();
    let back = node.command().args(["cat", root]).output().unwrap();
    assert!(back.status.success(), "ipfs cat failed");
    assert!(back.stdout == data, "ipfs cat returned other bytes");

    // Every block of the DAG is in the node's namespace, listed by our CLI.
    let mut dag: std::collections::BTreeSet<String> = node
        .run(&["refs", "-r", "--unique", root])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    dag.insert(root.to_string());
    assert!(dag.len() > 10, "a 3 MiB file of {} blocks", dag.len());
    let config = cluster.join("connector.toml");
    let ns = format!("kubo-{peer}");
    let listed: std::collections::BTreeSet<Vec<u8>> = cli_ok(&config, &["block", "ls", "-n", &ns])
        .lines()
        .map(|c| cidutil::parse(c).unwrap().hash().to_bytes())
        .collect();
    for c in &dag {
        let mh = cidutil::parse(c).unwrap().hash().to_bytes();
        assert!(listed.contains(&mh), "{c} is not in namespace {ns}");
    }

    // Ctrl-C: the daemon stops, and the kubo node with it.
    let status = dev
        .dev
        .signal_and_wait(libc::SIGINT, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "dev did not exit cleanly on SIGINT: {status:?}"
    );
    let port = api.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the kubo API still answers after dev stopped"
    );
    let down = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
        .args(["cluster", "down", "--dir"])
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(down.status.success(), "cluster down failed");
    assert_no_node_runs_in(&cluster);
}

/// libfaketime, which the nemesis's clock faults preload: installed from
/// Debian's packages when missing, as the test command sets itself up.
fn ensure_faketime() {
    let found = || {
        [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    };
    if found() {
        return;
    }
    let install = |update: bool| {
        let script = if update {
            "apt-get update -q && apt-get install -y -q faketime"
        } else {
            "apt-get install -y -q faketime"
        };
        std::process::Command::new("sh")
            .args(["-c", script])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        install(false) || install(true),
        "cannot install Debian's faketime package (the nemesis's clock faults need it)"
    );
    assert!(
        found(),
        "faketime installed, but libfaketimeMT.so.1 is not where expected"
    );
}

/// The nemesis checker CI runs (docs/NEMESIS.md): two seeds of 40 s each,
/// two daemons and a CLI connector on one namespace, admin jobs beside
/// them, kills, pauses, partitions and skewed clocks. Fails on what loses
/// data: a lost write, a corrupt read, gc removing a reachable block, a
/// block not read back. The freshness anomalies across daemons (false
/// absents, stale presents) and resurrections from a block left in a
/// second pack are known open defects (RELIABILITY.md, "Nemesis"): the
/// report names them and this test prints them, but does not fail on them
/// until they are fixed.
#[test]
fn cli_nemesis_two_seeds_lose_no_write_and_resurrect_no_delete() {
    ensure_faketime();
    for seed in ["1", "2"] {
        let (r, stderr) = run_on_own_cluster(&[
            "nemesis",
            "--seed",
            seed,
            "--seconds",
            "40",
            // A compactor paused past its two-minute lease, not longer:
            // the run waits for every job it started.
            "--max-job-pause",
            "125",
            // Every kind but the two of freshness across daemons, whose
            // settle time is not yet met (RELIABILITY.md, "Nemesis").
            "--fail-on",
            "lost-write,resurrection,corrupt-read,listing-missed,gc-removed-reachable,final-unchecked",
        ]);
        eprintln!(
            "{}",
            stderr
                .lines()
                .filter(|l| l.starts_with("nemesis") || l.starts_with("Error"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let mut kinds = std::collections::BTreeMap::<String, u64>::new();
        for a in r["anomalies"].as_array().unwrap() {
            *kinds
                .entry(a["kind"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        eprintln!(
            "seed {seed}: {} operations, {} acknowledged writes, {} removals, nemeses {}, anomalies {kinds:?}",
            r["operations"], r["acknowledged_writes"], r["acknowledged_removals"], r["nemeses"]
        );
        // The run did what a check needs: load, faults, a read-back of
        // every block written.
        assert!(r["acknowledged_writes"].as_u64().unwrap() > 1000, "{r}");
        assert!(r["acknowledged_removals"].as_u64().unwrap() > 100, "{r}");
        let faults: u64 = r["nemeses"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(faults >= 3, "{r}");
        assert!(r["final_checked"].as_u64().unwrap() > 1000, "{r}");
        for kind in [
            "lost-write",
            "resurrection",
            "corrupt-read",
            "listing-missed",
            "gc-removed-reachable",
            "final-unchecked",
        ] {
            assert!(!kinds.contains_key(kind), "seed {seed}: {kind}: {r}");
        }
    }
}
