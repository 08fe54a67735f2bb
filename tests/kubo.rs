//! Real kubo nodes on garage-ipfs: kubo built with our datastore plugin
//! (node A, blocks in its own namespace through the daemon's gRPC) and
//! stock kubo (node B, flatfs), on the test cluster of three real Garage
//! nodes, with the daemon as a process of its own.
//!
//! Every kubo node runs with kubo's `test` profile: loopback only, random
//! ports, no bootstrap peers, no delegated routers; B reaches A by a
//! `swarm connect` over loopback and nothing else.
//!
//! The tests share node A and the daemon and run one at a time (they
//! restart both, and kill Garage nodes).
//!
//! The last tests put the daemon's gateway behind the HTTP clients of the
//! IPFS world, on a site made by stock kubo: kubo's own gateway as the
//! oracle of path CARs, boxo's path gateway on remote backends
//! (`remote-gateway`, rainbow's mode of operation), Chromium through it,
//! and Helia's verified fetch (docs/CONFORMANCE.md).
#![cfg(feature = "integration-tests")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use garage_ipfs::harness::free_port;
use garage_ipfs::harness::kubo::{kubo_binary, Flavour, KuboNode};
use garage_ipfs::store::BlockStore;
use multihash::Multihash;
use rand::{RngCore, SeedableRng};
use tokio::sync::OnceCell;

/// The plugin's per-call deadline in these tests.
const PLUGIN_TIMEOUT_SECS: u64 = 20;

struct Fixture {
    daemon: DaemonProc,
    a: KuboNode,
    ns: String,
}

/// The daemon and node A, made on first use, running at the start of each
/// test (take it under `serial()`). A test that failed while A was down
/// leaves it down: A is started again. A daemon that exited on its own
/// (it never should) is started again too, and this test fails saying so,
/// with the daemon's exit status and log.
async fn fixture() -> &'static Fixture {
    static FIX: OnceCell<Fixture> = OnceCell::const_new();
    let f = FIX
        .get_or_init(|| async {
            let daemon = DaemonProc::new("kubo-daemon", "default");
            daemon.start().await;
            let repo = daemon.dir.join("kubo-a");
            let (a, ns) = garage_node(&daemon, &repo, &[]).await;
            a.start(Duration::from_secs(120)).expect("node A starts");
            Fixture { daemon, a, ns }
        })
        .await;
    let crashed = f.daemon.exited();
    if crashed.is_some() {
        f.daemon.start().await;
    }
    if f.a.pid().is_none() {
        f.a.start(Duration::from_secs(120))
            .expect("node A starts again");
    }
    if let Some(why) = crashed {
        panic!("since the previous kubo test, {why}");
    }
    f
}

fn ipfs_bin(flavour: Flavour) -> PathBuf {
    kubo_binary(flavour).unwrap_or_else(|e| panic!("cannot build kubo: {e}"))
}

/// A repo on garage-ipfs made by `garage-ipfs kubo init` (default
/// namespace, the daemon's token file), and its node (not started).
async fn garage_node(daemon: &DaemonProc, repo: &Path, extra: &[&str]) -> (KuboNode, String) {
    let bin = ipfs_bin(Flavour::Garage);
    let timeout = format!("{PLUGIN_TIMEOUT_SECS}s");
    let mut args = vec![
        "kubo",
        "init",
        "--repo",
        repo.to_str().unwrap(),
        "--profile",
        "test",
        "--timeout",
        &timeout,
        "--ipfs",
        bin.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cli_ok(&daemon.config, &args);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ns = report["namespace"].as_str().unwrap().to_string();
    let node = KuboNode::new(bin, repo);
    assert_eq!(ns, format!("kubo-{}", node.peer_id().unwrap()));
    (node, ns)
}

/// A stock kubo node (flatfs), test profile, started.
fn stock_node(label: &str) -> KuboNode {
    let bin = ipfs_bin(Flavour::Stock);
    let repo = state_dir(label).join("repo");
    let node = KuboNode::new(bin, &repo);
    let out = node
        .command()
        .args(["init", "--profile=test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.start(Duration::from_secs(120))
        .expect("stock node starts");
    node
}

fn ok(node: &KuboNode, args: &[&str]) -> String {
    node.run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// `n` pseudo-random bytes from `seed`.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes a file of `n` random bytes.
fn write_file(dir: &Path, name: &str, seed: u64, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes(seed, n)).unwrap();
    p
}

/// A directory tree of 30 files (sizes 0 B to 1.2 MiB) in nested dirs.
fn write_tree(root: &Path, seed: u64) {
    for i in 0..30u64 {
        let sub = root.join(format!("d{}", i % 3)).join(format!("e{}", i % 2));
        let size = [0, 1, 100, 3000, 3100, 70_000, 262_144, 262_145, 1_200_000][i as usize % 9];
        write_file(&sub, &format!("f{i}.bin"), seed + i, size);
    }
}

/// `ipfs add -Q` of a path: the root CID.
fn add(node: &KuboNode, path: &Path, extra: &[&str]) -> String {
    let mut args = vec!["add", "-Q", "-r"];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    ok(node, &args).trim().to_string()
}

/// The multihashes of a DAG (root included), as kubo walks it.
fn dag_multihashes(node: &KuboNode, root: &str) -> BTreeSet<Vec<u8>> {
    let out = ok(node, &["refs", "-r", "--unique", root]);
    std::iter::once(root)
        .chain(out.lines())
        .map(|c| cid::Cid::try_from(c.trim()).unwrap().hash().to_bytes())
        .collect()
}

/// The namespace's blocks, read through a fresh connector of ours (no
/// cache, no filter): multihash → size.
async fn namespace_blocks(ns: &str) -> std::collections::BTreeMap<Vec<u8>, u64> {
    let store = store().await;
    let ns = store.namespace(ns).unwrap();
    ns.list_sized()
        .map_ok(|(mh, size)| (mh.to_bytes(), size))
        .try_collect()
        .await
        .unwrap()
}

/// Files under `dir` (recursively) whose name looks like a flatfs block.
fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "data") {
                out.push(p);
            }
        }
    }
    out
}

fn cat(node: &KuboNode, path: &str) -> Vec<u8> {
    let out = node.command().args(["cat", path]).output().unwrap();
    assert!(
        out.status.success(),
        "ipfs cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every file of `tree` (on disk) equals `ipfs cat root/relative path`.
fn assert_tree_served(node: &KuboNode, root: &str, tree: &Path) {
    let mut stack = vec![tree.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(tree).unwrap().to_str().unwrap();
                let got = cat(node, &format!("/ipfs/{root}/{rel}"));
                assert!(got == std::fs::read(&p).unwrap(), "{rel} differs");
                files += 1;
            }
        }
    }
    assert!(files >= 30, "only {files} files checked");
}

#[test]
fn kubo_add_and_cat_keep_blocks_in_the_nodes_namespace_across_restarts() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-add");
        let file = write_file(&work, "big.bin", 1, 6 * 1024 * 1024 + 12345);
        let tree = work.join("tree");
        write_tree(&tree, 100);

        let file_root = add(&f.a, &file, &[]);
        // `add -r` of a directory: the wrapping root is the directory.
        let tree_root = add(&f.a, &tree, &[]);

        // The blocks are in A's namespace, as our own API lists them.
        let listed = namespace_blocks(&f.ns).await;
        for root in [&file_root, &tree_root] {
            let dag = dag_multihashes(&f.a, root);
            let missing = dag.iter().filter(|mh| !listed.contains_key(*mh)).count();
            assert_eq!(
                missing,
                0,
                "{missing} of {} blocks of {root} not in {}",
                dag.len(),
                f.ns
            );
        }
        // ... and none is in A's repo.
        assert!(
            !f.a.repo.join("blocks").exists(),
            "A's repo has a blocks/ dir"
        );
        assert_eq!(block_files(&f.a.repo), Vec::<PathBuf>::new());

        let want = std::fs::read(&file).unwrap();
        assert!(cat(&f.a, &file_root) == want, "cat differs");
        assert_tree_served(&f.a, &tree_root, &tree);

        // Restart the daemon under a running A (its plugin reconnects),
        // then A itself: still there, still identical.
        f.daemon.stop();
        f.daemon.start().await;
        assert!(
            cat(&f.a, &file_root) == want,
            "cat differs after the daemon's restart"
        );
        f.a.stop();
        f.a.start(Duration::from_secs(120)).unwrap();
        assert!(cat(&f.a, &file_root) == want, "cat differs after restarts");
        assert_tree_served(&f.a, &tree_root, &tree);
        eprintln!(
            "A added {} + {} blocks to {}; read back identical after restarting A and the daemon",
            dag_multihashes(&f.a, &file_root).len(),
            dag_multihashes(&f.a, &tree_root).len(),
            f.ns
        );
    });
}

#[test]
fn kubo_stock_peer_fetches_from_a_over_bitswap() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-bitswap");
        let file = write_file(&work, "shared.bin", 2, 5 * 1024 * 1024 + 7);
        let root = add(&f.a, &file, &[]);
        let b = stock_node("kubo-b");
        b.connect(&f.a).unwrap();
        let peers = ok(&b, &["swarm", "peers"]);
        assert_eq!(
            peers.lines().count(),
            1,
            "B has other peers than A: {peers}"
        );
        let got = cat(&b, &root);
        assert!(got == std::fs::read(&file).unwrap(), "B's copy differs");
        b.stop();
    });
}

/// `ipfs dag export` of `root` from `maker`, written to `car_file` and
/// imported into the namespace the daemon's gateway serves: the CAR.
fn import_into_daemon(f: &Fixture, maker: &KuboNode, root: &str, car_file: &Path) -> Vec<u8> {
    let car = maker
        .command()
        .args(["dag", "export", root])
        .output()
        .unwrap();
    assert!(
        car.status.success(),
        "{}",
        String::from_utf8_lossy(&car.stderr)
    );
    std::fs::write(car_file, &car.stdout).unwrap();
    cli_ok(
        &f.daemon.config,
        &[
            "car",
            "import",
            car_file.to_str().unwrap(),
            "--namespace",
            "default",
        ],
    );
    car.stdout
}

/// A stock kubo repo (test profile: no bootstrap peer, loopback only) whose
/// only delegated router is our daemon, with HTTP retrieval from
/// 127.0.0.1: its only way to blocks is our gateway. Not started.
fn routed_stock_node(f: &Fixture, repo: &Path) -> KuboNode {
    let node = KuboNode::new(ipfs_bin(Flavour::Stock), repo);
    ok(&node, &["init", "--profile=test"]);
    let router = format!("[\"http://127.0.0.1:{}\"]", f.daemon.ports[0]);
    for (key, value) in [
        ("Routing.DelegatedRouters", router.as_str()),
        ("HTTPRetrieval.Enabled", "true"),
        ("HTTPRetrieval.Allowlist", "[\"127.0.0.1\"]"),
    ] {
        ok(&node, &["config", "--json", key, value]);
    }
    node
}

/// Kubo's HTTP retrieval: a stock kubo node with our daemon as its only
/// delegated router and no peer (test profile: no bootstrap, loopback
/// only) finds our gateway as the provider of a 5 MiB UnixFS file's blocks
/// and fetches every one from it over HTTP, byte-identical. (Kubo 0.43.1
/// with `Bitswap.Libp2pEnabled = false` fetches nothing at all, HTTP
/// included: left at its default.)
#[test]
fn kubo_stock_node_fetches_over_http_from_our_gateway_named_by_our_router() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-http-retrieval");
        let file = write_file(&work, "routed.bin", 9, 5 * 1024 * 1024 + 11);
        // Chunked by a stock node offline, imported into the namespace the
        // daemon's gateway serves.
        let maker = KuboNode::new(ipfs_bin(Flavour::Stock), work.join("maker"));
        ok(&maker, &["init", "--profile=test"]);
        let root = ok(&maker, &["add", "-Q", file.to_str().unwrap()])
            .trim()
            .to_string();
        import_into_daemon(f, &maker, &root, &work.join("routed.car"));
        // Written by another connector: the daemon's filter sees it at its
        // next counter poll (README), and only then names itself. (Clients
        // may cache an empty answer for its max-age, 15 s.)
        let providers = format!(
            "http://127.0.0.1:{}/routing/v1/providers/{root}",
            f.daemon.ports[0]
        );
        eventually_async(
            Duration::from_secs(60),
            "our router names the root's provider",
            || {
                let url = providers.clone();
                async move {
                    let r = reqwest::get(url).await.unwrap().text().await.unwrap();
                    r.contains("transport-ipfs-gateway-http")
                }
            },
        )
        .await;

        let b = routed_stock_node(f, &work.join("b"));
        b.start(Duration::from_secs(120)).expect("node B starts");
        let before = f.daemon.metrics().await;
        let got = cat(&b, &root);
        let after = f.daemon.metrics().await;
        let peers = ok(&b, &["swarm", "peers"]);
        b.stop();
        assert!(peers.trim().is_empty(), "B has peers: {peers}");
        assert!(got == std::fs::read(&file).unwrap(), "B's copy differs");
        let count = |m: &str, op: &str| {
            metric(
                m,
                &format!(
                    "garage_ipfs_requests_total{{surface=\"gateway\",op=\"{op}\",status=\"ok\"}}"
                ),
            )
        };
        let routed = count(&after, "routing") - count(&before, "routing");
        let fetched = count(&after, "get") - count(&before, "get");
        eprintln!(
            "B asked our router {routed} times and fetched {fetched} blocks from our gateway"
        );
        // 5 MiB in kubo's 256 KiB chunks: 21 leaves and a root.
        assert!(routed >= 1.0, "our router was never asked");
        assert!(
            fetched >= 22.0,
            "only {fetched} blocks fetched from our gateway"
        );
    });
}

/// `refs local` of `node` and the namespace as our own connector lists it.
/// Once (in CI, before gc) `refs local` listed one block more than the
/// listing taken just after it, unexplained (RELIABILITY.md): when they
/// differ, the difference is printed with what our connector says of each
/// block, and both are taken again, up to three times, 2 s apart. The
/// caller asserts on the last pair, so a lasting difference still fails.
async fn refs_local_and_namespace(
    node: &KuboNode,
    ns: &str,
) -> (BTreeSet<Vec<u8>>, std::collections::BTreeMap<Vec<u8>, u64>) {
    for attempt in 1..=3 {
        let local = multihashes(&ok(node, &["refs", "local"]));
        let listed = namespace_blocks(ns).await;
        let set: BTreeSet<Vec<u8>> = listed.keys().cloned().collect();
        if local == set || attempt == 3 {
            return (local, listed);
        }
        let store = store().await;
        let handle = store.namespace(ns).unwrap();
        for mh in local.symmetric_difference(&set) {
            let mh = cid::multihash::Multihash::<64>::from_bytes(mh).unwrap();
            let c = cid::Cid::new_v1(0x55, mh);
            eprintln!(
                "attempt {attempt}: {c} in refs local: {}, in the listing: {}, has: {:?}",
                local.contains(&mh.to_bytes()),
                set.contains(&mh.to_bytes()),
                handle.has(&c).await
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    unreachable!()
}

/// Asserts two sets of multihashes are equal; if not, names the blocks
/// each has that the other lacks (as raw CIDs), not the whole sets.
fn assert_same_blocks(a: &BTreeSet<Vec<u8>>, b: &BTreeSet<Vec<u8>>, a_name: &str, b_name: &str) {
    if a == b {
        return;
    }
    let show = |s: Vec<&Vec<u8>>| -> Vec<String> {
        s.into_iter()
            .map(|mh| {
                let mh = cid::multihash::Multihash::<64>::from_bytes(mh).unwrap();
                cid::Cid::new_v1(0x55, mh).to_string()
            })
            .collect()
    };
    panic!(
        "{a_name} ({} blocks) differs from {b_name} ({} blocks): only in the first {:?}; only in the second {:?}",
        a.len(),
        b.len(),
        show(a.difference(b).collect()),
        show(b.difference(a).collect()),
    );
}

/// Multihashes from lines of CIDs.
fn multihashes(lines: &str) -> BTreeSet<Vec<u8>> {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|c| cid::Cid::try_from(c.trim()).unwrap().hash().to_bytes())
        .collect()
}

/// Everything kubo's GC must keep: the DAGs of the pins and of the MFS root.
fn kept_by_gc(node: &KuboNode) -> BTreeSet<Vec<u8>> {
    let recursive = ok(node, &["pin", "ls", "--type=recursive", "--quiet"]);
    let mfs = ok(node, &["files", "stat", "--hash", "/"]);
    let direct = ok(node, &["pin", "ls", "--type=direct", "--quiet"]);
    recursive
        .lines()
        .chain(mfs.lines())
        .filter(|l| !l.trim().is_empty())
        .flat_map(|root| dag_multihashes(node, root.trim()))
        .chain(multihashes(&direct))
        .collect()
}

#[test]
fn kubo_refs_local_repo_stat_and_gc_match_the_namespace() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-gc");
        let kept = add(
            &f.a,
            &write_file(&work, "kept.bin", 3, 3 * 1024 * 1024),
            &[],
        );
        let unpinned = add(
            &f.a,
            &write_file(&work, "unpinned.bin", 4, 2 * 1024 * 1024),
            &["--pin=false"],
        );
        let unpinned_later = add(
            &f.a,
            &write_file(&work, "later.bin", 5, 1024 * 1024 + 1),
            &[],
        );

        // refs local: exactly the namespace's blocks.
        let (local, listed) = refs_local_and_namespace(&f.a, &f.ns).await;
        let ns_set: BTreeSet<Vec<u8>> = listed.keys().cloned().collect();
        assert_same_blocks(&local, &ns_set, "refs local", "the namespace");

        // repo stat: their count, and their bytes within the repo's size.
        let stat: serde_json::Value =
            serde_json::from_str(&ok(&f.a, &["repo", "stat", "--enc=json"])).unwrap();
        let bytes: u64 = listed.values().sum();
        assert_eq!(stat["NumObjects"].as_u64().unwrap(), listed.len() as u64);
        let repo_size = stat["RepoSize"].as_u64().unwrap();
        let local_dir = dir_size(&f.a.repo);
        assert!(
            repo_size >= bytes && repo_size <= bytes + local_dir,
            "RepoSize {repo_size}: not the namespace's {bytes} B plus at most the repo dir's {local_dir} B"
        );

        // pin rm + repo gc: exactly the unpinned blocks go.
        ok(&f.a, &["pin", "rm", &unpinned_later]);
        let keep = kept_by_gc(&f.a);
        let before = ns_set;
        let gc_out = ok(&f.a, &["repo", "gc", "--quiet"]);
        let removed = multihashes(&gc_out);
        let after: BTreeSet<Vec<u8>> = namespace_blocks(&f.ns).await.keys().cloned().collect();
        let expected_gone: BTreeSet<Vec<u8>> = before.difference(&keep).cloned().collect();
        assert_same_blocks(
            &removed,
            &expected_gone,
            "gc removed",
            "the unpinned blocks",
        );
        let kept_in_ns = before.intersection(&keep).cloned().collect();
        assert_same_blocks(
            &after,
            &kept_in_ns,
            "the namespace after gc",
            "the pinned blocks",
        );
        for root in [&unpinned, &unpinned_later] {
            let root_mh = cid::Cid::try_from(root.as_str()).unwrap().hash().to_bytes();
            assert!(!after.contains(&root_mh), "{root} survived gc");
        }
        assert!(dag_multihashes(&f.a, &kept).is_subset(&after));
        let (local_after, listed_after) = refs_local_and_namespace(&f.a, &f.ns).await;
        let after_now: BTreeSet<Vec<u8>> = listed_after.keys().cloned().collect();
        assert_eq!(after_now, after, "the namespace moved after gc");
        assert_same_blocks(&local_after, &after, "refs local after gc", "the namespace");
        eprintln!(
            "refs local = namespace ({} blocks, {bytes} B); gc removed {} unpinned blocks, kept {}",
            before.len(),
            removed.len(),
            after.len()
        );
    });
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[test]
fn kubo_gc_on_one_node_never_removes_what_another_node_holds() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-two");
        let (c, c_ns) = garage_node(&f.daemon, &work.join("kubo-c"), &[]).await;
        assert_ne!(c_ns, f.ns, "each node gets a namespace of its own");
        c.start(Duration::from_secs(120)).unwrap();
        let file = write_file(&work, "both.bin", 6, 2 * 1024 * 1024 + 3);
        let root_a = add(&f.a, &file, &[]);
        let root_c = add(&c, &file, &[]);
        assert_eq!(root_a, root_c);
        let dag = dag_multihashes(&f.a, &root_a);

        ok(&c, &["pin", "rm", &root_c]);
        ok(&c, &["repo", "gc", "--quiet"]);
        let in_c = namespace_blocks(&c_ns).await;
        let in_a = namespace_blocks(&f.ns).await;
        assert!(
            dag.iter().all(|mh| !in_c.contains_key(mh)),
            "C's gc left blocks in C"
        );
        assert!(
            dag.iter().all(|mh| in_a.contains_key(mh)),
            "C's gc removed A's blocks"
        );

        // A still reads them, and so does a fresh connector of ours.
        assert!(cat(&f.a, &root_a) == std::fs::read(&file).unwrap());
        let store = store().await;
        let ns = store.namespace(&f.ns).unwrap();
        for mh in &dag {
            let mh = Multihash::<64>::from_bytes(mh).unwrap();
            let cid = cid::Cid::new_v1(0x55, mh);
            assert!(ns.get(&cid).await.unwrap().is_some(), "{cid} unreadable");
        }
        c.stop();
    });
}

#[test]
fn kubo_adds_with_one_garage_node_down_and_fails_clearly_with_two() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let c = cluster();
        let work = state_dir("kubo-faults");

        c.kill_node(2);
        let file = write_file(&work, "one-down.bin", 7, 3 * 1024 * 1024 + 5);
        let root = add(&f.a, &file, &[]);
        assert!(cat(&f.a, &root) == std::fs::read(&file).unwrap());
        let acknowledged = dag_multihashes(&f.a, &root);

        c.kill_node(1);
        let second = write_file(&work, "two-down.bin", 8, 2 * 1024 * 1024);
        let started = Instant::now();
        let err =
            f.a.run(&["add", "-Q", second.to_str().unwrap()])
                .expect_err("ipfs add with two of three Garage nodes down");
        let took = started.elapsed();
        let text = err.to_string();
        eprintln!("ipfs add with two nodes down failed after {took:.1?}: {text}");
        assert!(
            text.contains("garage-ipfs")
                && (text.contains("unavailable") || text.contains("quorum")),
            "unclear error: {text}"
        );
        // The plugin tries again while its per-call deadline allows, then
        // reports the daemon's last answer; kubo gives up on that failure.
        assert!(
            took < Duration::from_secs(PLUGIN_TIMEOUT_SECS + 10),
            "ipfs add failed only after {took:?}"
        );

        c.restart_nodes(&[1, 2]).await.unwrap();
        c.wait_healthy(Duration::from_secs(60)).await.unwrap();
        sees_all_nodes(store().await.connector()).await;
        let back = Instant::now();
        f.daemon.wait_sees_all_nodes().await;
        eprintln!(
            "the daemon reconnected to the restarted nodes in {:.1?}",
            back.elapsed()
        );
        assert!(cat(&f.a, &root) == std::fs::read(&file).unwrap());
        let store = store().await;
        let ns = store.namespace(&f.ns).unwrap();
        for mh in &acknowledged {
            let cid = cid::Cid::new_v1(0x55, Multihash::<64>::from_bytes(mh).unwrap());
            assert!(
                ns.get(&cid).await.unwrap().is_some(),
                "acknowledged {cid} lost"
            );
        }
        // kubo adds again once the cluster is back; the replicas the
        // killed nodes missed are restored.
        let again = add(&f.a, &second, &[]);
        assert!(cat(&f.a, &again) == std::fs::read(&second).unwrap());
        let (short, written) = verify_repair_verify(&ns).await;
        eprintln!("after the nodes returned: {short} blocks short, repair wrote {written}");
    });
}

#[test]
fn kubo_killed_mid_add_adds_again_and_verify_is_clean() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-kill");
        let file = write_file(&work, "interrupted.bin", 9, 96 * 1024 * 1024);
        let before = namespace_blocks(&f.ns).await.len();
        // Progress is read from the daemon's count of block writes (a
        // cheap poll), not by listing the namespace, which takes long
        // enough for the add to finish meanwhile.
        let block_puts = || async {
            metric(
                &f.daemon.metrics().await,
                r#"garage_ipfs_cluster_calls_total{op="put",call="block_put"}"#,
            )
        };
        let puts_before = block_puts().await;

        let mut add_cmd = f.a.command();
        add_cmd
            .args(["add", "-Q", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let client = ChildGuard::spawn(add_cmd);
        // Kill A once the add has stored some blocks, before half of the
        // file's 384 is in.
        eventually_async(
            Duration::from_secs(120),
            "the add writes 40 blocks",
            || async { block_puts().await >= puts_before + 40.0 },
        )
        .await;
        f.a.kill();
        client.kill();
        let stored_by_then = namespace_blocks(&f.ns).await.len() - before;
        // A client killed mid-stream must not take the daemon down.
        if let Some(why) = f.daemon.exited() {
            panic!("after A was killed, {why}");
        }
        assert!(
            stored_by_then < 192,
            "{stored_by_then} blocks stored before the kill: not mid-add"
        );

        f.a.start(Duration::from_secs(120)).unwrap();
        let root = add(&f.a, &file, &[]);
        assert!(cat(&f.a, &root) == std::fs::read(&file).unwrap());
        let out = cli_ok(
            &f.daemon.config,
            &["verify", "--namespace", &f.ns, "--json"],
        );
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        eprintln!(
            "A killed after {stored_by_then} blocks of 384; add again completed; verify: {out}"
        );
        assert_eq!(report["healthy"], report["checked"], "verify: {out}");
    });
}

/// Edits the `garageipfs` child of a repo's datastore spec (and, for the
/// namespace, `datastore_spec`, which kubo compares at every open).
fn edit_spec(repo: &Path, key: &str, value: &str) {
    let path = repo.join("config");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for m in config["Datastore"]["Spec"]["mounts"]
        .as_array_mut()
        .unwrap()
    {
        if m["mountpoint"] == "/blocks" {
            m["child"][key] = serde_json::json!(value);
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    if key == "namespace" {
        let path = repo.join("datastore_spec");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut spec: serde_json::Value = serde_json::from_str(&text).unwrap();
        let old = spec["mounts"][0]["namespace"].as_str().map(str::to_string);
        // datastore_spec holds the identity of each mount; ours is the one
        // with a namespace.
        for m in spec["mounts"].as_array_mut().unwrap() {
            if m.get("namespace").is_some() {
                m["namespace"] = serde_json::json!(value);
            }
        }
        assert!(old.is_some() || text.contains("namespace"), "{text}");
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    }
}

#[test]
fn kubo_bad_set_up_fails_clearly_within_the_deadline() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let work = state_dir("kubo-bad");
        let (node, _) = garage_node(&f.daemon, &work.join("good"), &[]).await;
        let file = write_file(&work, "x.bin", 10, 1000);
        // The repo works as made.
        add(&node, &file, &[]);
        // datastore_spec holds identity only: no endpoint, no token.
        let spec = std::fs::read_to_string(node.repo.join("datastore_spec")).unwrap();
        assert!(
            !spec.contains("endpoint") && !spec.contains("token"),
            "{spec}"
        );
        assert!(
            spec.contains("garageipfs") && spec.contains("kubo-"),
            "{spec}"
        );

        let wrong_token = work.join("wrong_token");
        std::fs::write(&wrong_token, "not-the-token").unwrap();
        let closed = free_port().unwrap();
        let cases: [(&str, String, &str); 3] = [
            (
                "token_file",
                wrong_token.display().to_string(),
                "refused the write token",
            ),
            (
                "endpoint",
                format!("127.0.0.1:{closed}"),
                "cannot reach the daemon",
            ),
            (
                "namespace",
                "no-such-namespace".into(),
                "garage-ipfs namespace create no-such-namespace",
            ),
        ];
        for (key, value, want) in cases {
            let repo = work.join(format!("bad-{key}"));
            copy_dir(&node.repo, &repo);
            edit_spec(&repo, key, &value);
            let bad = KuboNode::new(&node.bin, &repo);
            let started = Instant::now();
            let err = bad
                .run(&["add", "-Q", file.to_str().unwrap()])
                .expect_err("ipfs add with a bad set-up");
            let took = started.elapsed();
            let text = err.to_string();
            eprintln!(
                "{key}: ipfs add failed in {took:.1?}: {}",
                text.lines().last().unwrap_or("")
            );
            assert!(text.contains(want), "{key}: unclear error: {text}");
            assert!(
                !text.contains(&f.daemon.token),
                "{key}: the error shows the token"
            );
            assert!(
                took < Duration::from_secs(PLUGIN_TIMEOUT_SECS),
                "{key}: took {took:?}"
            );
            // The daemon too refuses to start, saying why.
            let started = Instant::now();
            let out = bad.command().arg("daemon").output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && text.contains(want),
                "{key}: ipfs daemon: {text}"
            );
            assert!(started.elapsed() < Duration::from_secs(PLUGIN_TIMEOUT_SECS));
        }
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            copy_dir(&p, &to.join(name));
        } else if name != "repo.lock" && name != "api" && name != "gateway" {
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
}

/// The cluster calls the daemon made for block lookups and reads (not the
/// presence filter's own polling) and the filter's counters, for one
/// namespace.
fn lookup_figures(metrics: &str, ns: &str) -> (f64, f64, f64) {
    let calls: f64 = ["get", "has"]
        .iter()
        .flat_map(|op| {
            [
                "block_put",
                "block_get",
                "table_read",
                "table_write",
                "k2v_write",
            ]
            .map(|call| format!("garage_ipfs_cluster_calls_total{{op=\"{op}\",call=\"{call}\"}}"))
        })
        .map(|k| metric(metrics, &k))
        .sum();
    let hits = metric(
        metrics,
        &format!("garage_ipfs_filter_hits_total{{namespace=\"{ns}\"}}"),
    );
    let fps = metric(
        metrics,
        &format!("garage_ipfs_filter_false_positives_total{{namespace=\"{ns}\"}}"),
    );
    (calls, hits, fps)
}

#[test]
fn kubo_absent_flood_from_a_peer_costs_no_more_cluster_calls_than_false_positives() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let b = stock_node("kubo-flood");
        b.connect(&f.a).unwrap();
        let before = f.daemon.metrics().await;
        let started = Instant::now();
        // B wants each CID for a moment; every want goes to A, its only peer.
        let found = garage_ipfs::tools::bench::kubo::flood(&b, 10_000)
            .await
            .unwrap();
        assert_eq!(found, 0, "B found an absent block");
        // A answers wants asynchronously: let the last ones arrive.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = f.daemon.metrics().await;
        let (c0, h0, fp0) = lookup_figures(&before, &f.ns);
        let (c1, h1, fp1) = lookup_figures(&after, &f.ns);
        let (calls, hits, fps) = (c1 - c0, h1 - h0, fp1 - fp0);
        eprintln!(
            "10 000 absent CIDs wanted by B in {:.1?}: A's daemon answered {hits} lookups from its filter, \
             {fps} false positives, {calls} cluster calls for lookups",
            started.elapsed()
        );
        assert!(
            hits >= 10_000.0,
            "only {hits} lookups reached the daemon's filter"
        );
        assert!(
            calls <= fps,
            "{calls} cluster calls for {fps} false positives"
        );
        b.stop();
    });
}

/// The plugin's own unit tests, `go vet`, and the committed gRPC stubs
/// against `proto/`.
#[test]
fn kubo_plugin_go_checks_pass_and_stubs_match_the_proto() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kubo-plugin");
    for args in [&["vet", "./..."][..], &["test", "-count=1", "./..."][..]] {
        let out = std::process::Command::new("go")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("cannot run go");
        assert!(
            out.status.success(),
            "go {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new("bash")
        .arg(dir.join("gen.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stubs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `garage-ipfs kubo bench` on a small file: every system runs every
/// workload, every answer it checks is right, and the flood costs what
/// each design says (go-ds-s3: a HEAD per absent CID; ours: none beyond
/// the presence filter's false positives).
#[test]
fn kubo_bench_runs_every_system_and_every_answer_is_right() {
    run(async {
        let _serial = serial().await;
        let dir = state_dir("kubo-bench");
        let json = dir.join("bench.json");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_garage-ipfs"))
            .args([
                "kubo",
                "bench",
                "--size-mib",
                "8",
                "--absent",
                "600",
                "--dir",
            ])
            .arg(dir.join("run"))
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubo bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for w in garage_ipfs::tools::bench::kubo::WORKLOADS {
            for k in garage_ipfs::tools::bench::kubo::Kind::ALL {
                let m = &report["results"][w][k.name()];
                assert!(
                    m["seconds"].as_f64().unwrap() > 0.0,
                    "{w} {}: {m}",
                    k.name()
                );
                // Every workload but add and restart checks its answer.
                let checked = !matches!(w, "add" | "restart");
                assert_eq!(
                    m["correct"],
                    serde_json::Value::from(checked.then_some(true)),
                    "{w} {}: {m}",
                    k.name()
                );
            }
        }
        let flood = |k: &str| {
            report["results"]["absent_flood"][k]["garage_requests_per_op"]
                .as_f64()
                .unwrap()
        };
        assert!(
            flood("s3") >= 1.0,
            "go-ds-s3 without a Bloom filter: {}",
            flood("s3")
        );
        // Ours: a cluster call only for a filter false positive.
        let ours = &report["results"]["absent_flood"]["garage"];
        assert!(
            ours["garage_requests"].as_f64().unwrap()
                <= ours["filter_false_positives"].as_f64().unwrap(),
            "ours: {ours}"
        );
        eprintln!(
            "kubo bench (8 MiB): add {}x, cat_cold {}x go-ds-s3's speed",
            report["speedup_vs_s3"]["add"], report["speedup_vs_s3"]["cat_cold"]
        );
    });
}

// ---------------------------------------------------------------------------
// Our gateway as the backend of the HTTP clients of the IPFS world: kubo's
// own gateway as the oracle of path CARs, boxo's path gateway on remote
// backends (rainbow's mode of operation) in block and car modes, Chromium
// through it, Helia's verified fetch by path.

/// Files in `many/`, enough for kubo to shard it (HAMT) once its sharding
/// threshold is set low.
const HAMT_FILES: usize = 300;
/// The picture's size in pixels.
const PICTURE: (u32, u32) = (480, 360);

/// A small web site, made by a stock kubo node (`ipfs add -r`: kubo's own
/// chunking and HAMT sharding) and imported into the namespace our
/// daemon's gateway serves. The maker keeps running: its gateway answers
/// from the same blocks, an oracle for ours.
struct Site {
    root: String,
    tree: PathBuf,
    maker: KuboNode,
    /// FNV-1a over the picture's RGB bytes, row by row.
    picture_fnv: u32,
}

/// FNV-1a, 32 bits.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The page that decodes the picture and reports what it saw: its size and
/// the FNV-1a of its pixels' RGB bytes, as `data-result` on `<body>`.
const PICTURE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>picture</title></head>
<body><img id="p" src="picture.png" alt="a picture">
<script>
function done(text) { document.body.setAttribute('data-result', text); }
function check(img) {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const x = c.getContext('2d');
  x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data;
  let h = 0x811c9dc5;
  for (let i = 0; i < d.length; i += 4) {
    for (let k = 0; k < 3; k++) { h ^= d[i + k]; h = Math.imul(h, 0x01000193) >>> 0; }
  }
  done('decoded ' + c.width + 'x' + c.height + ' fnv=' + h.toString(16));
}
const img = document.getElementById('p');
if (img.complete && img.naturalWidth > 0) check(img);
else { img.onload = () => check(img); img.onerror = () => done('error'); }
</script></body></html>
"#;

/// Writes the site's files under `tree`; returns the picture's FNV.
fn write_site(tree: &Path) -> u32 {
    write_file(&tree.join("docs"), "big.bin", 21, 3 * 1024 * 1024 + 7);
    let notes = "Notes kept in Garage.\n".repeat(40);
    std::fs::write(tree.join("docs/notes.txt"), &notes).unwrap();
    // The same bytes twice: one block, reached twice (car-dups).
    std::fs::write(tree.join("docs/copy.txt"), &notes).unwrap();
    std::fs::create_dir_all(tree.join("many")).unwrap();
    for i in 0..HAMT_FILES {
        std::fs::write(
            tree.join(format!("many/f{i:03}.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    // Noise does not compress: the PNG spans several 256 KiB chunks.
    let (w, h) = PICTURE;
    let rgb = bytes(22, (w * h * 3) as usize);
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&rgb).unwrap();
    }
    std::fs::write(tree.join("picture.png"), &png).unwrap();
    std::fs::write(tree.join("picture.html"), PICTURE_PAGE).unwrap();
    fnv1a(&rgb)
}

/// The site, made on first use; its blocks are readable through the
/// fixture daemon's gateway when this returns.
async fn site(f: &Fixture) -> &'static Site {
    static SITE: OnceCell<Site> = OnceCell::const_new();
    SITE.get_or_init(|| async {
        let work = state_dir("kubo-site");
        let tree = work.join("site");
        let picture_fnv = write_site(&tree);
        let maker = KuboNode::new(ipfs_bin(Flavour::Stock), work.join("maker"));
        ok(&maker, &["init", "--profile=test"]);
        ok(
            &maker,
            &["config", "Import.UnixFSHAMTDirectorySizeThreshold", "1KiB"],
        );
        maker
            .start(Duration::from_secs(120))
            .expect("the maker starts");
        let root = add(&maker, &tree, &["--cid-version=1"]);
        // `many/` must be a HAMT, or the shard paths go untested.
        let many = ok(&maker, &["resolve", &format!("/ipfs/{root}/many")]);
        let many = many.trim().trim_start_matches("/ipfs/");
        let block = maker
            .command()
            .args(["block", "get", many])
            .output()
            .unwrap();
        let node = garage_ipfs::unixfs::Node::decode(&block.stdout.into()).unwrap();
        assert_eq!(
            node.kind(),
            Some(garage_ipfs::unixfs::Kind::HamtShard),
            "kubo did not shard many/"
        );
        let car = import_into_daemon(f, &maker, &root, &work.join("site.car"));
        let blocks = car_cids(&car).await.1.len();
        // Imported by another connector: the daemon's filter learns of the
        // blocks at its next counter poll.
        let url = format!("http://127.0.0.1:{}/ipfs/{root}", f.daemon.ports[0]);
        eventually_async(
            Duration::from_secs(60),
            "our gateway serves the whole site",
            || {
                let url = url.clone();
                async move {
                    let (status, car) = car_from(&url, "dag-scope=all", CAR_NO_DUPS).await;
                    status == 200 && car_cids(&car).await.1.len() == blocks
                }
            },
        )
        .await;
        eprintln!("site {root}: {blocks} blocks");
        Site {
            root,
            tree,
            maker,
            picture_fnv,
        }
    })
    .await
}

const CAR_DUPS: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=y";
const CAR_NO_DUPS: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";

/// GET `url?query` with `Accept: accept`: the status and the body.
async fn car_from(url: &str, query: &str, accept: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("{url}?{query}"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    // A CAR cut short shows as a body error: an empty body then.
    (
        status,
        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

/// A CARv1's roots and its sections' CIDs, in order (empty if it does not
/// parse to its end).
async fn car_cids(car: &[u8]) -> (Vec<cid::Cid>, Vec<cid::Cid>) {
    let Ok(mut reader) = iroh_car::CarReader::new(car).await else {
        return Default::default();
    };
    let roots = reader.header().roots().to_vec();
    let mut cids = Vec::new();
    loop {
        match reader.next_block().await {
            Ok(Some((c, _))) => cids.push(c),
            Ok(None) => return (roots, cids),
            Err(_) => return Default::default(),
        }
    }
}

/// kubo's gateway (boxo) is the reference implementation of the trustless
/// gateway: for every path into the site (the root, directories, a HAMT
/// directory and a file behind it, multi-block files), every `dag-scope`,
/// `entity-bytes` ranges (from the start, the middle, the end, negative
/// offsets) and both `dups` settings, our gateway answers the same status
/// and, for a 200, a CAR with the same roots and the same blocks in the
/// same order as kubo's own gateway on the same blocks; for a path that
/// leads nowhere, the blocks that prove it (DESIGN.md).
#[test]
fn kubo_gateway_and_ours_send_the_same_car_for_every_path_scope_and_range() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let s = site(f).await;
        let theirs = s.maker.gateway_url().unwrap();
        let ours = format!("http://127.0.0.1:{}", f.daemon.ports[0]);
        let mut cases: Vec<(String, String, &str)> = Vec::new();
        for path in [
            "",
            "/docs",
            "/docs/big.bin",
            "/docs/notes.txt",
            "/many",
            "/many/f123.txt",
            "/picture.png",
        ] {
            for scope in ["all", "entity", "block"] {
                cases.push((path.into(), format!("dag-scope={scope}"), CAR_DUPS));
            }
        }
        for path in ["/docs/big.bin", "/picture.png"] {
            for range in [
                "0:99",
                "300000:700000",
                "262144:524287",
                "-1000:*",
                "100:-100",
                "2000000:*",
                "0:*",
            ] {
                cases.push((
                    path.into(),
                    format!("dag-scope=entity&entity-bytes={range}"),
                    CAR_DUPS,
                ));
            }
        }
        for scope in ["all", "entity"] {
            cases.push(("/docs".into(), format!("dag-scope={scope}"), CAR_NO_DUPS));
        }
        cases.push(("".into(), "dag-scope=all".into(), CAR_NO_DUPS));
        // Paths that lead nowhere: a CAR of the blocks that show it.
        for path in ["/docs/nope", "/many/nope", "/docs/big.bin/nope"] {
            cases.push((path.into(), "dag-scope=all".into(), CAR_DUPS));
        }

        let mut failures = Vec::new();
        let mut compared = 0;
        for (path, query, accept) in &cases {
            let at = |base: &str| format!("{base}/ipfs/{}{path}", s.root);
            let (their_status, their_car) = car_from(&at(&theirs), query, accept).await;
            let (our_status, our_car) = car_from(&at(&ours), query, accept).await;
            let what = format!("{path}?{query} ({accept})");
            if their_status != our_status {
                failures.push(format!("{what}: status {our_status}, kubo {their_status}"));
                continue;
            }
            if their_status != 200 {
                continue;
            }
            let (theirs_car, ours_car) = (car_cids(&their_car).await, car_cids(&our_car).await);
            assert!(
                !theirs_car.1.is_empty(),
                "{what}: kubo's CAR is empty or cut"
            );
            if theirs_car != ours_car {
                let show = |c: &(Vec<cid::Cid>, Vec<cid::Cid>)| {
                    format!(
                        "roots {:?}, {} blocks {:?}",
                        c.0.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                        c.1.len(),
                        c.1.iter()
                            .take(8)
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                    )
                };
                failures.push(format!(
                    "{what}:\n  ours: {}\n  kubo: {}",
                    show(&ours_car),
                    show(&theirs_car)
                ));
            }
            compared += 1;
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ from kubo's gateway:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        assert!(compared >= 30, "only {compared} CARs compared");
    });
}

/// boxo's path gateway on remote backends (`remote-gateway`, rainbow's
/// mode of operation) with our gateway as its only backend. It runs until
/// dropped; its backend requests are logged to `log`.
struct RemoteGateway {
    url: String,
    log: PathBuf,
    _child: ChildGuard,
}

impl RemoteGateway {
    async fn start(f: &Fixture, mode: &str) -> Self {
        let bin = kubo_binary(Flavour::RemoteGateway)
            .unwrap_or_else(|e| panic!("cannot build remote-gateway: {e}"));
        let port = free_port().unwrap();
        let log = state_dir(&format!("remote-gateway-{mode}")).join("backend.log");
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "-backend",
            &format!("http://127.0.0.1:{}", f.daemon.ports[0]),
            "-mode",
            mode,
            "-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        let child = ChildGuard::spawn(cmd);
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "remote-gateway listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        Self {
            url,
            log,
            _child: child,
        }
    }

    /// The backend requests logged so far: (request URI, status).
    fn backend_requests(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("backend GET "))
            .map(|l| {
                let (uri, status) = l.split_once(' ').unwrap();
                (uri.to_string(), status.to_string())
            })
            .collect()
    }
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The stand-in for rainbow: boxo's gateway (the code rainbow and kubo
/// serve with) taking every block from our gateway, in both of rainbow's
/// remote-backend modes. It serves a multi-MiB file (whole and a byte
/// range) and a file behind a HAMT shard byte-identical, and directory
/// listings naming every entry (the HAMT one too). Its backend log shows
/// the mode's requests only (raw blocks, or CARs with `entity-bytes` for
/// the range), all answered by us with 200 (or abandoned by boxo).
#[test]
fn boxo_remote_gateway_serves_files_and_listings_from_ours_in_block_and_car_modes() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let s = site(f).await;
        let big = std::fs::read(s.tree.join("docs/big.bin")).unwrap();
        for mode in ["block", "car"] {
            let g = RemoteGateway::start(f, mode).await;
            let base = format!("{}/ipfs/{}", g.url, s.root);
            let r = reqwest::get(format!("{base}/docs/big.bin")).await.unwrap();
            assert_eq!(r.status(), 200, "{mode}: big.bin");
            assert!(r.bytes().await.unwrap() == big, "{mode}: big.bin differs");
            let r = reqwest::Client::new()
                .get(format!("{base}/docs/big.bin"))
                .header("range", "bytes=1000000-1300000")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{mode}: a range of big.bin");
            assert!(
                r.bytes().await.unwrap() == big[1_000_000..=1_300_000],
                "{mode}: the range differs"
            );
            let (status, text) = get_text(&format!("{base}/many/f123.txt")).await;
            assert_eq!((status, text.as_str()), (200, "file 123\n"), "{mode}");
            let (status, listing) = get_text(&format!("{base}/docs/")).await;
            assert_eq!(status, 200, "{mode}: docs/ listing");
            for name in ["big.bin", "notes.txt", "copy.txt"] {
                assert!(listing.contains(name), "{mode}: docs/ lists no {name}");
            }
            let (status, listing) = get_text(&format!("{base}/many/")).await;
            assert_eq!(status, 200, "{mode}: many/ listing");
            let missing: Vec<_> = (0..HAMT_FILES)
                .map(|i| format!("f{i:03}.txt"))
                .filter(|n| !listing.contains(n.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "{mode}: many/ does not list {missing:?}"
            );

            let requests = g.backend_requests();
            eprintln!("{mode} mode: {} backend requests", requests.len());
            assert!(!requests.is_empty(), "{mode}: no backend request logged");
            // boxo cancels the block prefetches it no longer needs once a
            // response is done: the only answers allowed besides a 200.
            let refused: Vec<_> = requests
                .iter()
                .filter(|(_, s)| s != "200" && s != "error(context canceled)")
                .collect();
            assert!(refused.is_empty(), "{mode}: not 200: {refused:?}");
            let foreign: Vec<_> = requests
                .iter()
                .filter(|(uri, _)| {
                    !uri.contains(if mode == "block" {
                        "format=raw"
                    } else {
                        "format=car"
                    })
                })
                .collect();
            assert!(foreign.is_empty(), "{mode}: other requests: {foreign:?}");
            if mode == "car" {
                assert!(
                    requests
                        .iter()
                        .any(|(uri, _)| uri.contains("/docs/big.bin")
                            && uri.contains("entity-bytes=")),
                    "car mode asked for no byte range: {requests:?}"
                );
            }
        }
    });
}

/// Debian's Chromium (`CHROMIUM_BIN`, else `chromium` on PATH).
fn chromium() -> PathBuf {
    let bin =
        std::env::var_os("CHROMIUM_BIN").map_or_else(|| PathBuf::from("chromium"), PathBuf::from);
    let found = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "no Chromium at {}: install Debian's (`apt-get install chromium`, as .ci/run does) \
         or set CHROMIUM_BIN",
        bin.display()
    );
    bin
}

/// What the picture page reported in headless Chromium: its
/// `data-result`, or a panic message with what Chromium printed.
fn picture_page_result(bin: &Path, page: &str) -> Result<String, String> {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--force-color-profile=srgb",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(page)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    dom.split("data-result=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{page}: no result (exit {}):\n{dom}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A picture in a real browser: headless Chromium opens a page of the site
/// through boxo's gateway on ours (both modes), and through a stock kubo
/// whose only source is our gateway (our router names it; HTTP retrieval,
/// no peer). The page draws the PNG (several blocks) on a canvas and
/// reports its size and the FNV-1a of its pixels, which must be the
/// picture's, computed here from the pixels it was encoded from.
#[test]
fn chromium_shows_a_picture_from_garage_through_boxo_and_kubo_gateways() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let s = site(f).await;
        let bin = chromium();
        let want = format!(
            "decoded {}x{} fnv={:x}",
            PICTURE.0, PICTURE.1, s.picture_fnv
        );
        for mode in ["block", "car"] {
            let g = RemoteGateway::start(f, mode).await;
            let page = format!("{}/ipfs/{}/picture.html", g.url, s.root);
            let got = picture_page_result(&bin, &page).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, want, "{mode}");
            assert!(
                g.backend_requests()
                    .iter()
                    .any(|(u, _)| u.contains(if mode == "car" {
                        "picture.png"
                    } else {
                        "format=raw"
                    })),
                "{mode}: the picture did not come from our gateway"
            );
        }

        let viewer = routed_stock_node(f, &state_dir("kubo-viewer").join("repo"));
        viewer
            .start(Duration::from_secs(120))
            .expect("the viewer starts");
        let before = f.daemon.metrics().await;
        let page = format!(
            "{}/ipfs/{}/picture.html",
            viewer.gateway_url().unwrap(),
            s.root
        );
        let got = picture_page_result(&bin, &page);
        let after = f.daemon.metrics().await;
        let peers = ok(&viewer, &["swarm", "peers"]);
        viewer.stop();
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}")), want, "through kubo");
        assert!(peers.trim().is_empty(), "the viewer has peers: {peers}");
        let gets = |m: &str| {
            metric(
                m,
                "garage_ipfs_requests_total{surface=\"gateway\",op=\"get\",status=\"ok\"}",
            )
        };
        let fetched = gets(&after) - gets(&before);
        // The site's root, the page, the picture's root and its chunks.
        assert!(
            fetched >= 4.0,
            "kubo fetched only {fetched} blocks from our gateway"
        );
    });
}

/// Helia's verified fetch reads files by path (through the HAMT shard, and
/// a multi-MiB file), taking raw blocks from our gateway and checking each
/// one: the bytes are the files'.
#[test]
fn helia_verified_fetch_reads_files_by_path_from_ours() {
    run(async {
        let _serial = serial().await;
        let f = fixture().await;
        let s = site(f).await;
        let gateway = format!("http://127.0.0.1:{}", f.daemon.ports[0]);
        let work = state_dir("verified-fetch");
        for path in ["docs/big.bin", "many/f123.txt", "picture.png"] {
            let out = work.join(path.replace('/', "_"));
            let mut fetch = node();
            fetch.args([
                "verified-fetch.mjs",
                &gateway,
                &format!("ipfs://{}/{path}", s.root),
                out.to_str().unwrap(),
            ]);
            let report = run_ok(fetch, "verified-fetch.mjs");
            let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
            let got = std::fs::read(&out).unwrap();
            assert!(
                got == std::fs::read(s.tree.join(path)).unwrap(),
                "{path} differs"
            );
            let requests = report["requests"].as_array().unwrap();
            assert!(
                !requests.is_empty(),
                "{path}: no request reached our gateway"
            );
            assert!(
                requests
                    .iter()
                    .all(|r| r.as_str().unwrap().contains("format=raw")),
                "{path}: {requests:?}"
            );
        }
    });
}
