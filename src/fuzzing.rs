//! The properties the fuzz targets check (`fuzz/`), as functions of the
//! input bytes: each panics when a property fails. The coverage-guided
//! targets call them (`bash fuzz/run.sh`), and a unit test replays the
//! seed corpora in `fuzz/corpus/` through them on every `cargo test`, so
//! that what fuzzing once found stays fixed without an instrumented build.

use futures::StreamExt;

use crate::cid as cidutil;
use crate::store::{BlockStore, Entry, MemBlockStore};

/// CID parsing: text (any multibase, CIDv0 and v1), binary, and datastore
/// keys. Whatever parses must print and parse back to itself.
pub fn cid(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cid) = cidutil::parse(text) {
            let again = cidutil::parse(&cid.to_string()).expect("a printed CID parses");
            assert_eq!(again, cid);
            let _ = cidutil::check_supported(&cid);
        }
        if let Ok(mh) = cidutil::from_dskey(text) {
            assert_eq!(cidutil::from_dskey(&cidutil::dskey(&mh)).unwrap(), mh);
        }
    }
    if let Ok(cid) = cid::Cid::try_from(data) {
        let _ = cidutil::check_supported(&cid);
        let _ = cidutil::verify(&cid, data);
    }
}

/// Index values as read from the cluster: any bytes must decode to an
/// entry or an error, and a decoded entry must encode back to bytes that
/// decode to the same entry.
pub fn index_entry(data: &[u8]) {
    if let Ok(entry) = Entry::decode(data) {
        let again = Entry::decode(&entry.encode()).expect("an encoded entry decodes");
        assert_eq!(again, entry);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// CAR import into an in-memory store, and the DAG link decoders it runs
/// on each block: any bytes must import, or fail with an error, and
/// whatever was stored must match its CID.
pub fn car(data: &[u8]) {
    runtime().block_on(async {
        let store = MemBlockStore::default();
        let _ = crate::dag::import_car(&store, data, |_| ()).await;
        let stored: Vec<_> = store.list().collect().await;
        for mh in stored {
            let cid = cidutil::raw_cid(mh.expect("memory lists"));
            let block = store.get(&cid).await.expect("memory reads");
            let block = block.expect("a listed block is there");
            cidutil::verify(&cid, &block).expect("stored blocks match their CID");
        }
    });
    // The link decoders on raw bytes, under each codec they handle.
    let mh = cid::multihash::Multihash::wrap(0x12, &[0; 32]).expect("sha2-256 digest size");
    for codec in [0x70, 0x71, 0x55] {
        let _ = crate::ipld::links(&cid::Cid::new_v1(codec, mh), data);
    }
}

/// The kubo RPC's multipart bodies (`block/put`, `dag/import`): any body,
/// with any boundary, gets an answer (never a panic, never a 5xx), and a
/// 200 means every block it names is stored and matches its CID. The first
/// byte picks the endpoint, the next bytes up to a newline (at most 70) are
/// the boundary, the rest is the body.
pub fn multipart(input: &[u8]) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use crate::api::{ApiOptions, WriteAuth};

    let Some((&which, rest)) = input.split_first() else {
        return;
    };
    let cut = rest.iter().take(70).position(|&b| b == b'\n').unwrap_or(0);
    let (boundary, body) = rest.split_at(cut);
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let path = match which % 3 {
        0 => "/api/v0/block/put",
        1 => "/api/v0/block/put?cid-codec=dag-pb&mhtype=sha2-256",
        _ => "/api/v0/dag/import?pin-roots=false",
    };
    runtime().block_on(async {
        let opts = ApiOptions::with_defaults(None);
        let ns = std::sync::Arc::new(MemBlockStore::default());
        let addr = "127.0.0.1:5001".parse().expect("address");
        let mut open = opts.clone();
        open.allow_anonymous_writes_on_loopback = true;
        let router = crate::api::kubo::router(ns.clone(), &opts, WriteAuth::new(&open, addr));
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
                let Some(key) = line.split("\"Key\":\"").nth(1) else {
                    continue;
                };
                let key = key.split('"').next().unwrap_or_default();
                let cid = cidutil::parse(key).expect("an answered key parses");
                let data = ns.get(&cid).await.expect("memory reads");
                let data = data.expect("an answered key is stored");
                cidutil::verify(&cid, &data).expect("stored blocks match their CID");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    /// Every input of the seed corpora (and whatever was added to them
    /// after a fuzzing run) holds the properties.
    #[test]
    fn the_fuzz_seed_corpora_hold_every_property() {
        type Property = fn(&[u8]);
        let targets: [(&str, Property); 4] = [
            ("cid", super::cid),
            ("index_entry", super::index_entry),
            ("car", super::car),
            ("multipart", super::multipart),
        ];
        for (name, check) in targets {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).expect("the seed corpus is in the tree") {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("{name}: {}", path.display());
                check(&data);
                n += 1;
            }
            assert!(n >= 3, "{name}: only {n} seed inputs in {}", dir.display());
        }
    }
}
