//! The kubo RPC's multipart bodies (`block/put`, `dag/import`): any body,
//! with any boundary, gets an answer (never a panic, never a 5xx), and a
//! 200 means every block it names is stored and matches its CID.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use garage_ipfs::api::{self, ApiOptions, WriteAuth};
use garage_ipfs::store::MemBlockStore;
use garage_ipfs::store::BlockStore;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fuzz_target!(|input: &[u8]| {
    // First byte: which endpoint; next up to 70 bytes up to a newline: the
    // boundary; the rest: the body.
    let Some((&which, rest)) = input.split_first() else { return };
    let cut = rest.iter().take(70).position(|&b| b == b'\n').unwrap_or(0);
    let (boundary, body) = rest.split_at(cut);
    let Ok(boundary) = std::str::from_utf8(boundary) else { return };
    let path = match which % 3 {
        0 => "/api/v0/block/put",
        1 => "/api/v0/block/put?cid-codec=dag-pb&mhtype=sha2-256",
        _ => "/api/v0/dag/import?pin-roots=false",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = ApiOptions::with_defaults(None);
        let ns = std::sync::Arc::new(MemBlockStore::default());
        let addr = "127.0.0.1:5001".parse().expect("address");
        let mut open = opts.clone();
        open.allow_anonymous_writes_on_loopback = true;
        let router = api::kubo::router(ns.clone(), &opts, WriteAuth::new(&open, addr));
        let Ok(req) = Request::post(path)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body.to_vec()))
        else {
            return;
        };
        let resp = router.oneshot(req).await.expect("infallible");
        let status = resp.status();
        assert!(!status.is_server_error(), "{status} for a client's body");
        let text = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        if status.is_success() && which % 3 != 2 {
            for line in String::from_utf8_lossy(&text).lines() {
                let Some(key) = line.split("\"Key\":\"").nth(1) else { continue };
                let key = key.split('"').next().unwrap_or_default();
                let cid = garage_ipfs::cid::parse(key).expect("an answered key parses");
                let data = ns.get(&cid).await.expect("memory reads");
                let data = data.expect("an answered key is stored");
                garage_ipfs::cid::verify(&cid, &data).expect("stored blocks match their CID");
            }
        }
    });
});
