//! The daemon's surfaces against a real three-node cluster, driven by real
//! third-party clients: Helia and ipfs-car, kubo-rpc-client (npm), grpcio
//! (PyPI), plus the gateway conformance cases and write authorisation.
//!
//! The clients live in `tests/clients/`; `tests/clients/setup.sh` installs
//! them (Node 24 from PyPI, npm packages) on first use. A missing client is
//! a failure that says why, never a skip.
#![cfg(feature = "integration-tests")]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use common::*;
use garage_ipfs::api::grpc::pb;
use garage_ipfs::api::{self, ApiOptions, Listeners};
use garage_ipfs::cid::{self as cidutil, codec};
use garage_ipfs::garage::Op;
use garage_ipfs::store::BlockStore;

const TOKEN: &str = "surfaces-test-token";

struct Daemon {
    gateway: SocketAddr,
    rpc: SocketAddr,
    grpc: SocketAddr,
    namespace: String,
}

/// One in-process daemon over the cluster: writes need `TOKEN`.
async fn daemon() -> &'static Daemon {
    static DAEMON: tokio::sync::OnceCell<Daemon> = tokio::sync::OnceCell::const_new();
    DAEMON
        .get_or_init(|| async {
            let store = store().await;
            let namespace = unique_ns("surfaces");
            let listeners = Listeners::bind_loopback().await.unwrap();
            let [gateway, rpc, grpc] = listeners.addrs().unwrap();
            let opts = ApiOptions::with_defaults(Some(TOKEN)).with_namespace(&namespace);
            tokio::spawn(api::serve(listeners, store, opts, std::future::pending()));
            Daemon {
                gateway,
                rpc,
                grpc,
                namespace,
            }
        })
        .await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The status of a request without a body.
async fn status(c: &reqwest::Client, method: &str, url: String) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    c.request(method, url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn http_helia_reads_an_ipfs_car_import_through_the_gateway() {
    run(async {
        let d = daemon().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("original.bin");
        let data = random_bytes(5 * 1024 * 1024 + 12345);
        std::fs::write(&file, &data).unwrap();
        let car = dir.path().join("original.car");
        let root = ipfs_car_pack(&file, &car).to_string();

        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&car).unwrap()).file_name("original.car"),
        );
        let resp = http()
            .post(format!("http://{}/api/v0/dag/import?stats=true", d.rpc))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains(&format!("{{\"/\":\"{root}\"}}")), "{body}");
        assert!(body.contains("\"BlockCount\""), "{body}");

        let out = dir.path().join("fetched.bin");
        let mut fetch = node();
        fetch.args([
            "helia-fetch.mjs",
            &format!("http://{}", d.gateway),
            &root,
            out.to_str().unwrap(),
        ]);
        run_ok(fetch, "helia-fetch.mjs");
        let fetched = std::fs::read(&out).unwrap();
        assert_eq!(fetched.len(), data.len());
        assert!(fetched == data, "Helia read different bytes");
    });
}

/// kubo's official JS RPC client (`kubo-rpc.mjs`) against `/api/v0`:
/// version and id answer; block/put of raw and dag-cbor blocks returns
/// the CIDs computed locally, block/get and block/stat give them back,
/// block/rm removes them (get and stat fail after); a put without the
/// token is refused.
#[test]
fn http_kubo_rpc_client_round_trips_block_put_get_stat_rm_and_needs_the_token() {
    run(async {
        let d = daemon().await;
        let mut c = node();
        c.args(["kubo-rpc.mjs", &format!("http://{}", d.rpc), TOKEN]);
        let out = run_ok(c, "kubo-rpc.mjs");
        assert!(out.contains('{'), "no JSON summary: {out}");
    });
}

/// A stock Python grpcio client (`grpc_client.py`, stubs generated from
/// the .proto): Put, Get, Has, GetSize, List and Delete round-trip, and
/// bad input, absent blocks and a missing token get their status codes.
#[test]
fn grpc_python_grpcio_client_round_trips_put_get_has_list_delete_and_codes() {
    run(async {
        let d = daemon().await;
        let mut c = Command::new(clients().join("bin/python"));
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/grpc_client.py"
        ))
        .arg(d.grpc.to_string())
        .args(["--token", TOKEN]);
        let out = run_ok(c, "grpc_client.py");
        assert!(out.contains('{'), "no JSON summary: {out}");
    });
}

#[test]
fn grpc_rust_client_codes_and_auth() {
    run(async {
        let d = daemon().await;
        let mut client =
            pb::blockstore_client::BlockstoreClient::connect(format!("http://{}", d.grpc))
                .await
                .unwrap();
        let (cid, data) = random_block(codec::RAW, 0x12, 3000);
        let put = |token: Option<&str>| {
            let mut req = tonic::Request::new(pb::PutRequest {
                namespace: "grpc-rust".into(),
                cid: cid.to_string(),
                data: data.to_vec(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            req
        };
        let err = client.put(put(None)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        let err = client.put(put(Some("wrong"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        client.put(put(Some(TOKEN))).await.unwrap();
        let got = client
            .get(pb::GetRequest {
                namespace: "grpc-rust".into(),
                cid: cid.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.data, data.to_vec());
        let err = client
            .get(pb::GetRequest {
                namespace: "grpc-rust".into(),
                cid: "not-a-cid".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let (absent, _) = random_block(codec::RAW, 0x12, 10);
        let err = client
            .get_size(pb::GetSizeRequest {
                namespace: "grpc-rust".into(),
                cid: absent.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    });
}

#[test]
fn http_gateway_conformance() {
    run(async {
        let d = daemon().await;
        let ns = store().await.namespace(&d.namespace).unwrap();
        let (cid, data) = random_block(codec::RAW, 0x12, 70_000);
        ns.put(&cid, data.clone()).await.unwrap();
        let gw = format!("http://{}", d.gateway);
        let c = http();

        let r = c
            .get(format!("{gw}/ipfs/{cid}?format=raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/vnd.ipld.raw");
        assert_eq!(h["etag"], format!("\"{cid}.raw\"").as_str());
        assert_eq!(h["cache-control"], "public, max-age=29030400, immutable");
        assert_eq!(
            h["content-disposition"],
            format!("attachment; filename=\"{cid}.bin\"").as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), data);

        let r = c
            .get(format!("{gw}/ipfs/{cid}"))
            .header("accept", "application/vnd.ipld.raw")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-location"],
            format!("/ipfs/{cid}?format=raw").as_str()
        );

        let r = c
            .head(format!("{gw}/ipfs/{cid}?format=raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            data.len().to_string().as_str()
        );

        let r = c
            .get(format!("{gw}/ipfs/{cid}?format=car"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.ipld.car; version=1; order=dfs; dups=n"
        );
        assert_eq!(
            r.headers()["content-disposition"],
            format!("attachment; filename=\"{cid}.car\"").as_str()
        );
        let car = r.bytes().await.unwrap();
        let mem = garage_ipfs::MemBlockStore::new();
        garage_ipfs::dag::import_car(&mem, &car[..], |_| ())
            .await
            .unwrap();
        assert_eq!(mem.get(&cid).await.unwrap(), Some(data.clone()));

        let (absent, _) = random_block(codec::RAW, 0x12, 10);
        assert_eq!(
            status(&c, "GET", format!("{gw}/ipfs/{absent}?format=raw")).await,
            404
        );
        assert_eq!(
            status(&c, "HEAD", format!("{gw}/ipfs/{absent}?format=raw")).await,
            404
        );
        assert_eq!(
            status(&c, "GET", format!("{gw}/ipfs/{absent}?format=car")).await,
            404
        );
        assert_eq!(
            status(&c, "GET", format!("{gw}/ipfs/bafyNOTACID?format=raw")).await,
            400
        );
        let r = c
            .get(format!("{gw}/ipfs/{cid}"))
            .header("accept", "application/vnd.ipfs.ipns-record")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 406);
        assert_eq!(
            status(&c, "GET", format!("{gw}/ipfs/{cid}?format=tar")).await,
            406
        );

        let r = c
            .get(format!("{gw}/ipfs/bafkqaaa?format=raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().is_empty());
        let r = c
            .get(format!("{gw}/ipfs/bafkqaaa?format=car"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            status(&c, "HEAD", format!("{gw}/ipfs/bafkqaaa?format=raw")).await,
            200
        );

        // Read-only.
        let r = c
            .post(format!("{gw}/ipfs/{cid}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    });
}

#[test]
fn http_writes_without_the_token_are_refused() {
    run(async {
        let d = daemon().await;
        let data = Bytes::from_static(b"no token, no write");
        let cid = cidutil::compute(codec::RAW, 0x12, &data).unwrap();
        let form = || {
            reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(data.to_vec()).file_name("b"),
            )
        };
        let url = format!("http://{}/api/v0/block/put", d.rpc);
        let r = http().post(&url).multipart(form()).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["Type"], "error");
        let r = http()
            .post(&url)
            .bearer_auth("wrong")
            .multipart(form())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let ns = store().await.namespace(&d.namespace).unwrap();
        assert!(
            !ns.has(&cid).await.unwrap(),
            "a refused write stored the block"
        );
        let r = http()
            .post(&url)
            .bearer_auth(TOKEN)
            .multipart(form())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(ns.has(&cid).await.unwrap());
        // Deletes too: without the token, or with a wrong one, the stored
        // block stays.
        for token in [None, Some("wrong")] {
            let mut req = http().post(format!("http://{}/api/v0/block/rm?arg={cid}", d.rpc));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            assert_eq!(req.send().await.unwrap().status(), 401);
        }
        assert!(
            ns.has(&cid).await.unwrap(),
            "a refused delete removed the block"
        );
    });
}

#[test]
fn store_blockstore_trait_on_garage() {
    run(async {
        use blockstore::Blockstore;
        let ns = store().await.namespace(&unique_ns("trait")).unwrap();
        let (cid, data) = random_block(codec::DAG_CBOR, 0x1e, 9000);
        Blockstore::put_keyed(&ns, &cid, &data).await.unwrap();
        assert!(Blockstore::has(&ns, &cid).await.unwrap());
        assert_eq!(
            Blockstore::get(&ns, &cid).await.unwrap(),
            Some(data.to_vec())
        );
        assert!(Blockstore::put_keyed(&ns, &cid, b"not it").await.is_err());
        Blockstore::remove(&ns, &cid).await.unwrap();
        assert!(!Blockstore::has(&ns, &cid).await.unwrap());
    });
}

/// A daemon with a presence filter answers absent blocks through the
/// gateway with 404 (and delegated routing with no provider), and the lookups make no more cluster calls than the
/// filter had false positives (each costs one index read; the filter's
/// own polling is not counted); `/metrics` shows the requests, the
/// filter's hits and the connector's cluster calls.
#[test]
fn http_absent_lookups_cost_no_cluster_call_beyond_false_positives() {
    run(async {
        let conn = new_connector("metrics").await;
        let store = garage_ipfs::GarageStore::with_filters(conn.clone());
        let namespace = unique_ns("metrics");
        let ns = store.namespace(&namespace).unwrap();
        let (present, data) = random_block(codec::RAW, 0x12, 100_000);
        ns.put(&present, data.clone()).await.unwrap();
        eventually(std::time::Duration::from_secs(60), "filter ready", || {
            ns.filter_stats().unwrap().ready
        })
        .await;
        let listeners = Listeners::bind_loopback().await.unwrap();
        let [gateway, rpc, grpc] = listeners.addrs().unwrap();
        let opts = ApiOptions::with_defaults(Some(TOKEN)).with_namespace(&namespace);
        tokio::spawn(api::serve(
            listeners,
            store.clone(),
            opts,
            std::future::pending(),
        ));
        let c = http();

        // Only the calls the lookups made (counted under their operation),
        // not the filter's own polling, which runs beside them.
        let lookup_calls = || {
            let counters = conn.call_counters();
            counters.for_op(Op::Get) + counters.for_op(Op::Has)
        };
        let false_positives = || ns.filter_stats().unwrap().false_positives;
        let (calls_before, fps_before) = (lookup_calls(), false_positives());
        for _ in 0..100 {
            let (absent, _) = random_block(codec::RAW, 0x12, 64);
            let url = format!("http://{gateway}/ipfs/{absent}?format=raw");
            assert_eq!(status(&c, "GET", url.clone()).await, 404);
            assert_eq!(status(&c, "HEAD", url).await, 404);
            // Delegated routing names no provider for it, from the filter.
            let url = format!("http://{gateway}/routing/v1/providers/{absent}");
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), r#"{"Providers":[]}"#);
        }
        let spent = lookup_calls() - calls_before;
        let fps = false_positives() - fps_before;
        // A false positive of the filter costs one index read; nothing
        // else may reach the cluster.
        assert!(
            spent <= fps,
            "{spent} cluster calls for 300 absent lookups, {fps} false positives"
        );
        // For a block held, the gateway itself, at its listening address.
        let url = format!("http://{gateway}/routing/v1/providers/{present}");
        let r = c
            .get(url)
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let record: serde_json::Value =
            serde_json::from_str(r.text().await.unwrap().trim()).unwrap();
        assert_eq!(
            record["Addrs"],
            serde_json::json!([format!("/ip4/127.0.0.1/tcp/{}/http", gateway.port())])
        );
        assert_eq!(record["Protocols"][0], "transport-ipfs-gateway-http");
        let url = format!("http://{gateway}/ipfs/{present}?format=raw");
        let body = c.get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body, data);
        let mut client = pb::blockstore_client::BlockstoreClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let has = client
            .has(pb::HasRequest {
                namespace: namespace.clone(),
                cid: present.to_string(),
            })
            .await
            .unwrap();
        assert!(has.into_inner().has);

        let text = c
            .get(format!("http://{rpc}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |prefix: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
        };
        // Every absent lookup (100 GET, 100 HEAD, 100 providers) was
        // answered by the filter, or let through as a false positive.
        let hits = value(&format!(
            "garage_ipfs_filter_hits_total{{namespace=\"{namespace}\"}}"
        ));
        assert_eq!(
            hits + fps as f64,
            300.0,
            "{hits} filter hits, {fps} false positives"
        );
        assert!(
            value("garage_ipfs_requests_total{surface=\"gateway\",op=\"get\",status=\"client_error\"}")
                >= 100.0
        );
        assert!(
            value("garage_ipfs_requests_total{surface=\"gateway\",op=\"get\",status=\"ok\"}")
                >= 1.0
        );
        assert!(
            value("garage_ipfs_requests_total{surface=\"grpc\",op=\"Has\",status=\"ok\"}") >= 1.0
        );
        assert!(
            value("garage_ipfs_request_duration_seconds_count{surface=\"gateway\",op=\"head\"}")
                >= 100.0
        );
        assert!(value("garage_ipfs_cluster_calls_total{op=\"put\",call=\"block_put\"}") >= 1.0);
        assert!(value("garage_ipfs_cluster_calls_total{op=\"get\",call=\"block_get\"}") >= 1.0);
        assert_eq!(value("garage_ipfs_put_bytes_in_flight"), 0.0);
        assert_eq!(
            value(&format!(
                "garage_ipfs_filter_ready{{namespace=\"{namespace}\"}}"
            )),
            1.0
        );
    });
}
