//! The kubo RPC subset (`/api/v0/...`): block put/get/stat/rm, dag
//! import/export, version and id. POST only; errors in kubo's
//! `{"Message","Code","Type"}` body; writes need the bearer token.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use cid::Cid;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use super::{limited, ApiError, ApiOptions, WriteAuth};
use crate::cid::{self as cidutil, codec, MAX_BLOCK_SIZE};
use crate::dag::{self, Scope};
use crate::store::BlockStore;

#[derive(Clone)]
struct Rpc<S> {
    store: S,
    auth: WriteAuth,
    peer_key: [u8; 32],
}

type Args = Query<Vec<(String, String)>>;

/// The RPC routes.
pub(crate) fn router<S: BlockStore + Clone>(
    store: S,
    opts: &ApiOptions,
    auth: WriteAuth,
) -> Router {
    let state = Rpc {
        store,
        auth,
        peer_key: opts.peer_key,
    };
    let short = Router::new()
        .route("/api/v0/block/put", post(block_put::<S>))
        .route("/api/v0/block/get", post(block_get::<S>))
        .route("/api/v0/block/stat", post(block_stat::<S>))
        .route("/api/v0/block/rm", post(block_rm::<S>))
        .route("/api/v0/version", post(version))
        .route("/api/v0/id", post(id::<S>))
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        // Refuses a declared Content-Length over the limit before reading.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            opts.max_body_bytes,
        ));
    let long = Router::new()
        .route("/api/v0/dag/import", post(dag_import::<S>))
        .route("/api/v0/dag/export", post(dag_export::<S>))
        .layer(DefaultBodyLimit::max(opts.max_car_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            opts.max_car_bytes,
        ));
    let short = limited(short, opts, opts.request_timeout);
    let long = limited(long, opts, opts.request_timeout * 10);
    short
        .merge(long)
        .method_not_allowed_fallback(|| async {
            kubo_error(
                StatusCode::METHOD_NOT_ALLOWED,
                1,
                "the kubo RPC takes POST only",
            )
        })
        .fallback(|| async { kubo_error(StatusCode::NOT_FOUND, 0, "command not found") })
        .with_state(state)
}

fn kubo_error(status: StatusCode, code: u8, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"Message": msg, "Code": code, "Type": "error"})),
    )
        .into_response()
}

fn reply(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(ApiError::into_kubo_response)
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn flag(args: &[(String, String)], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| arg(args, n).is_some_and(|v| v.is_empty() || v == "true"))
}

fn cid_args(args: &[(String, String)]) -> Result<Vec<Cid>, ApiError> {
    let cids: Vec<Cid> = args
        .iter()
        .filter(|(k, _)| k == "arg")
        .map(|(_, v)| cidutil::parse(v).map_err(|e| ApiError::BadRequest(e.to_string())))
        .collect::<Result<_, _>>()?;
    if cids.is_empty() {
        return Err(ApiError::BadRequest("argument \"cid\" is required".into()));
    }
    Ok(cids)
}

fn one_cid(args: &[(String, String)]) -> Result<Cid, ApiError> {
    Ok(cid_args(args)?[0])
}

fn ndjson(lines: Vec<serde_json::Value>) -> Response {
    let mut body = String::new();
    for l in lines {
        body.push_str(&l.to_string());
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The CID of a `block/put` part, from `cid-codec`/`format`, `mhtype`,
/// `mhlen` and `version`, as kubo computes it.
fn put_cid(args: &[(String, String)], data: &[u8]) -> Result<Cid, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let format = arg(args, "format");
    let codec_name = arg(args, "cid-codec").or(match format {
        Some("v0") | Some("protobuf") => Some("dag-pb"),
        Some("cbor") => Some("dag-cbor"),
        other => other,
    });
    let codec = match codec_name {
        None | Some("") => codec::RAW,
        Some(n) => cidutil::codec_code(n).ok_or_else(|| bad(format!("unknown cid-codec {n:?}")))?,
    };
    let mh = match arg(args, "mhtype") {
        None | Some("") => 0x12,
        Some(n) => cidutil::hash_code(n).ok_or_else(|| bad(format!("unknown mhtype {n:?}")))?,
    };
    let cid = cidutil::compute(codec, mh, data).map_err(|e| bad(e.to_string()))?;
    let mut cid = match arg(args, "mhlen").and_then(|l| l.parse::<i64>().ok()) {
        Some(len) if len >= 0 && len as u8 != cid.hash().size() => {
            let mh = cid.hash().truncate(len as u8);
            Cid::new_v1(codec, mh)
        }
        _ => cid,
    };
    let v0 = format == Some("v0") || arg(args, "version") == Some("0");
    if v0 {
        if codec != codec::DAG_PB || cid.hash().code() != 0x12 || cid.hash().size() != 32 {
            return Err(bad(
                "CIDv0 needs the dag-pb codec and a full sha2-256".into()
            ));
        }
        cid = Cid::new_v0(*cid.hash()).map_err(|e| bad(e.to_string()))?;
    }
    Ok(cid)
}

async fn block_put<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
    headers: HeaderMap,
    multipart: MultipartBody,
) -> Response {
    reply(
        async {
            let mut multipart = writer_body(&rpc, &headers, multipart)?;
            let mut lines = Vec::new();
            while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
                let data = read_field(field, MAX_BLOCK_SIZE).await?;
                let cid = put_cid(&args, &data)?;
                let size = data.len();
                rpc.store.put(&cid, data).await?;
                lines.push(json!({"Key": cid.to_string(), "Size": size}));
            }
            if lines.is_empty() {
                return Err(ApiError::BadRequest(
                    "no block in the request (multipart file field)".into(),
                ));
            }
            Ok(ndjson(lines))
        }
        .await,
    )
}

type MultipartBody = Result<Multipart, axum::extract::multipart::MultipartRejection>;

/// The multipart body of a write, once its token is checked.
fn writer_body<S: BlockStore + Clone>(
    rpc: &Rpc<S>,
    headers: &HeaderMap,
    multipart: MultipartBody,
) -> Result<Multipart, ApiError> {
    rpc.auth.check_headers(headers)?;
    multipart.map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(e.body_text())
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

async fn read_field(
    mut field: axum::extract::multipart::Field<'_>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "block is over the {limit}-byte limit"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn block_get<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
) -> Response {
    reply(
        async {
            let cid = one_cid(&args)?;
            match rpc.store.get(&cid).await? {
                Some(data) => Ok(
                    ([(header::CONTENT_TYPE, "application/vnd.ipld.raw")], data).into_response()
                ),
                None => Err(not_found(&cid)),
            }
        }
        .await,
    )
}

fn not_found(cid: &Cid) -> ApiError {
    ApiError::NotFound(format!(
        "block was not found locally (offline): ipld: could not find {cid}"
    ))
}

async fn block_stat<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
) -> Response {
    reply(
        async {
            let cid = one_cid(&args)?;
            match rpc.store.get_size(&cid).await? {
                Some(size) => {
                    Ok(axum::Json(json!({"Key": cid.to_string(), "Size": size})).into_response())
                }
                None => Err(not_found(&cid)),
            }
        }
        .await,
    )
}

async fn block_rm<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
    headers: HeaderMap,
) -> Response {
    reply(
        async {
            rpc.auth.check_headers(&headers)?;
            let cids = cid_args(&args)?;
            let force = flag(&args, &["force", "f"]);
            let quiet = flag(&args, &["quiet", "q"]);
            let mut lines = Vec::new();
            for cid in cids {
                let outcome = match rpc.store.delete(&cid).await {
                    Ok(true) => None,
                    Ok(false) if force => None,
                    Ok(false) => Some(format!("ipld: could not find {cid}")),
                    Err(e) => Some(e.to_string()),
                };
                match outcome {
                    Some(err) => lines.push(json!({"Hash": cid.to_string(), "Error": err})),
                    None if !quiet => lines.push(json!({"Hash": cid.to_string()})),
                    None => (),
                }
            }
            Ok(ndjson(lines))
        }
        .await,
    )
}

async fn dag_import<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
    headers: HeaderMap,
    multipart: MultipartBody,
) -> Response {
    let multipart = match writer_body(&rpc, &headers, multipart) {
        Ok(m) => m,
        Err(e) => return e.into_kubo_response(),
    };
    let stats = flag(&args, &["stats"]);
    if flag(&args, &["progress"]) {
        // Streamed: progress lines as each batch lands, then the roots.
        // The status is 200 from the start; a failure is the last line.
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
        tokio::spawn(async move {
            let tx2 = tx.clone();
            let result = import_parts(&rpc.store, multipart, move |s| {
                let line = json!({"Progress": {"Blocks": s.blocks, "Bytes": s.bytes}});
                let _ = tx2.try_send(format!("{line}\n"));
            })
            .await;
            let lines = match result {
                Ok(summaries) => import_lines(&summaries, stats),
                Err(e) => vec![json!({"Message": e.to_string(), "Code": 0, "Type": "error"})],
            };
            for l in lines {
                let _ = tx.send(format!("{l}\n")).await;
            }
        });
        let body = Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
        );
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    reply(
        import_parts(&rpc.store, multipart, |_| ())
            .await
            .map(|s| ndjson(import_lines(&s, stats))),
    )
}

async fn import_parts<S: BlockStore>(
    store: &S,
    mut multipart: Multipart,
    mut progress: impl FnMut(&dag::ImportSummary) + Send,
) -> Result<Vec<dag::ImportSummary>, ApiError> {
    let mut out = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let reader = tokio_util::io::StreamReader::new(
            field.map_err(|e| std::io::Error::other(e.body_text())),
        );
        let summary = dag::import_car(store, reader, &mut progress).await?;
        tracing::info!(
            blocks = summary.blocks,
            bytes = summary.bytes,
            "CAR imported"
        );
        out.push(summary);
    }
    if out.is_empty() {
        return Err(ApiError::BadRequest(
            "no CAR in the request (multipart file field)".into(),
        ));
    }
    Ok(out)
}

fn import_lines(summaries: &[dag::ImportSummary], stats: bool) -> Vec<serde_json::Value> {
    let mut lines: Vec<_> = summaries
        .iter()
        .flat_map(|s| s.roots.iter())
        .map(|r| json!({"Root": {"Cid": {"/": r}, "PinErrorMsg": ""}}))
        .collect();
    if stats {
        lines.push(json!({"Stats": {
            "BlockCount": summaries.iter().map(|s| s.blocks).sum::<u64>(),
            "BlockBytesCount": summaries.iter().map(|s| s.bytes).sum::<u64>(),
        }}));
    }
    lines
}

async fn dag_export<S: BlockStore + Clone>(
    State(rpc): State<Rpc<S>>,
    Query(args): Args,
) -> Response {
    reply(
        async {
            let cid = one_cid(&args)?;
            let Some(stream) = dag::car_stream(rpc.store.clone(), cid, Scope::All).await? else {
                return Err(not_found(&cid));
            };
            let body = Body::from_stream(
                stream.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
            );
            Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car")], body).into_response())
        }
        .await,
    )
}

async fn version() -> Response {
    axum::Json(json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "Commit": "",
        "Repo": "garage",
        "System": format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
        "Golang": "none (garage-ipfs, Rust)",
    }))
    .into_response()
}

/// A libp2p peer id for an ed25519 public key: the identity multihash of
/// its protobuf encoding, base58btc.
pub(crate) fn peer_id(key: &[u8; 32]) -> (String, String) {
    let mut proto = vec![0x08, 0x01, 0x12, 0x20];
    proto.extend_from_slice(key);
    let mut mh = vec![0x00, proto.len() as u8];
    mh.extend_from_slice(&proto);
    let id = multibase::encode(multibase::Base::Base58Btc, &mh)[1..].to_string();
    use base64::Engine;
    (id, base64::engine::general_purpose::STANDARD.encode(&proto))
}

async fn id<S: BlockStore + Clone>(State(rpc): State<Rpc<S>>) -> Response {
    let (id, public_key) = peer_id(&rpc.peer_key);
    axum::Json(json!({
        "ID": id,
        "PublicKey": public_key,
        "Addresses": [],
        "AgentVersion": concat!("garage-ipfs/", env!("CARGO_PKG_VERSION")),
        "ProtocolVersion": "ipfs/0.1.0",
        "Protocols": [],
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::MemBackend;
    use crate::api::Backend;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn multipart_body(parts: &[&[u8]]) -> (String, Vec<u8>) {
        let boundary = "XgarageipfsX";
        let mut body = Vec::new();
        for p in parts {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(p);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }

    async fn post(
        app: &Router,
        uri: &str,
        body: Option<(String, Vec<u8>)>,
        token: Option<&str>,
    ) -> (StatusCode, Bytes) {
        let mut req = Request::builder().method("POST").uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((ct, b)) => req.header(header::CONTENT_TYPE, ct).body(Body::from(b)),
            None => req.body(Body::empty()),
        };
        let r = app.clone().oneshot(req.unwrap()).await.unwrap();
        let status = r.status();
        (status, r.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn put_get_stat_rm_and_auth() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let opts = ApiOptions::with_defaults(Some("tok"));
        let auth = WriteAuth::new(&opts, "127.0.0.1:5001".parse().unwrap());
        let app = router(ns, &opts, auth);

        let (s, b) = post(
            &app,
            "/api/v0/block/put",
            Some(multipart_body(&[b"hello"])),
            None,
        )
        .await;
        assert_eq!(s, 401, "{b:?}");
        assert!(String::from_utf8_lossy(&b).contains("\"Type\":\"error\""));

        let (s, b) = post(
            &app,
            "/api/v0/block/put?cid-codec=raw",
            Some(multipart_body(&[b"hello", b"world"])),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 200, "{b:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&b)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let key = lines[0]["Key"].as_str().unwrap().to_string();
        assert_eq!(
            key,
            cidutil::compute(codec::RAW, 0x12, b"hello")
                .unwrap()
                .to_string()
        );

        let (s, b) = post(&app, &format!("/api/v0/block/get?arg={key}"), None, None).await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello"[..]));
        let (s, b) = post(&app, &format!("/api/v0/block/stat?arg={key}"), None, None).await;
        assert_eq!(s, 200);
        assert!(String::from_utf8_lossy(&b).contains("\"Size\":5"));
        // A delete without the token, or with a wrong one, is refused and
        // leaves the block; with it, the block goes.
        for token in [None, Some("wrong")] {
            let (s, _) = post(&app, &format!("/api/v0/block/rm?arg={key}"), None, token).await;
            assert_eq!(s, 401);
        }
        let (s, b) = post(&app, &format!("/api/v0/block/get?arg={key}"), None, None).await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello"[..]));
        let (s, _) = post(
            &app,
            &format!("/api/v0/block/rm?arg={key}"),
            None,
            Some("tok"),
        )
        .await;
        assert_eq!(s, 200);
        let (s, b) = post(&app, &format!("/api/v0/block/get?arg={key}"), None, None).await;
        assert_eq!(s, 404, "{b:?}");
        let (s, _) = post(&app, "/api/v0/block/get?arg=nope", None, None).await;
        assert_eq!(s, 400);

        // Oversize block: 413, nothing stored.
        let big = vec![1u8; MAX_BLOCK_SIZE + 1];
        let (s, _) = post(
            &app,
            "/api/v0/block/put",
            Some(multipart_body(&[&big])),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 413);
        let big_cid = cidutil::compute(codec::RAW, 0x12, &big).unwrap();
        let (s, _) = post(
            &app,
            &format!("/api/v0/block/stat?arg={big_cid}"),
            None,
            None,
        )
        .await;
        assert_eq!(s, 404, "an oversize block was stored");

        let (s, b) = post(&app, "/api/v0/id", None, None).await;
        assert_eq!(s, 200);
        assert!(
            String::from_utf8_lossy(&b).contains("\"ID\":\"12D3KooW"),
            "{b:?}"
        );
        let r = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/api/v0/version")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    }

    #[test]
    fn cid_options_follow_kubo() {
        let args = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = put_cid(&args(&[]), b"x").unwrap();
        assert_eq!(
            (c.version(), c.codec(), c.hash().code()),
            (cid::Version::V1, codec::RAW, 0x12)
        );
        let c = put_cid(
            &args(&[("cid-codec", "dag-cbor"), ("mhtype", "blake3")]),
            b"x",
        )
        .unwrap();
        assert_eq!((c.codec(), c.hash().code()), (codec::DAG_CBOR, 0x1e));
        let c = put_cid(&args(&[("format", "v0")]), b"x").unwrap();
        assert_eq!(c.version(), cid::Version::V0);
        assert!(put_cid(&args(&[("mhtype", "md5x")]), b"x").is_err());
    }
}
