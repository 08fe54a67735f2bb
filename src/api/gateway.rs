//! The trustless gateway: `GET`/`HEAD /ipfs/{cid}` as raw blocks or CARs,
//! read-only, as the IPFS trustless gateway spec describes; delegated
//! routing (`routing.rs`) on the same listener.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cid::Cid;
use futures::StreamExt;
use serde::Deserialize;

use super::{limited, ApiError, ApiOptions};
use crate::cid as cidutil;
use crate::dag::{self, Scope};
use crate::store::BlockStore;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
const CAR_TYPE: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";
const IMMUTABLE: &str = "public, max-age=29030400, immutable";

/// The gateway's routes.
pub(crate) fn router<S: BlockStore + Clone>(store: S, opts: &ApiOptions) -> Router {
    let routes = Router::new()
        .route("/ipfs/{cid}", get(block::<S>))
        .route("/ipfs/{cid}/{*path}", get(block_with_path::<S>))
        .with_state(store.clone())
        .merge(super::routing::router(
            store,
            super::routing::Provider {
                id: super::kubo::peer_id(&opts.peer_key).0,
                addrs: opts.gateway_public_addrs.clone(),
            },
        ))
        .fallback(|| async {
            ApiError::NotFound(
                "not found: this trustless gateway serves /ipfs/{cid} and /routing/v1/providers/{cid}"
                    .into(),
            )
        })
        ;
    // Readable from any web page (Helia, verified fetch): every answer is
    // public and no request carries credentials. Outside the limits, so
    // that their 408 and 503 are readable too, and preflights are answered
    // here (the routing spec asks for GET and OPTIONS).
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers(tower_http::cors::Any)
        .expose_headers(tower_http::cors::Any);
    limited(routes, opts, opts.request_timeout * 10).layer(cors)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct GatewayQuery {
    format: Option<String>,
    dag_scope: Option<String>,
    car_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Raw,
    Car,
}

async fn block<S: BlockStore + Clone>(
    state: State<S>,
    method: Method,
    Path(cid): Path<String>,
    Query(q): Query<GatewayQuery>,
    headers: HeaderMap,
) -> Response {
    respond(state, method, cid, None, q, headers).await
}

async fn block_with_path<S: BlockStore + Clone>(
    state: State<S>,
    method: Method,
    Path((cid, path)): Path<(String, String)>,
    Query(q): Query<GatewayQuery>,
    headers: HeaderMap,
) -> Response {
    respond(state, method, cid, Some(path), q, headers).await
}

async fn respond<S: BlockStore + Clone>(
    State(store): State<S>,
    method: Method,
    cid: String,
    path: Option<String>,
    q: GatewayQuery,
    headers: HeaderMap,
) -> Response {
    match serve(store, method, &cid, path, q, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[tracing::instrument(skip_all, fields(cid = %cid_text))]
async fn serve<S: BlockStore + Clone>(
    store: S,
    method: Method,
    cid_text: &str,
    path: Option<String>,
    q: GatewayQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let cid = cidutil::parse(cid_text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    cidutil::check_supported(&cid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (format, from_accept) = negotiate(q.format.as_deref(), headers)?;
    if path.as_deref().is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::BadRequest(
            "path resolution is not supported by this gateway: request the CID of the target"
                .into(),
        ));
    }
    let head = method == Method::HEAD;
    let only_if_cached = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("only-if-cached"));
    let absent = || {
        if only_if_cached {
            Ok((
                StatusCode::PRECONDITION_FAILED,
                "block is not in this store\n",
            )
                .into_response())
        } else {
            Err(ApiError::NotFound(format!(
                "block {cid} is not stored here"
            )))
        }
    };
    match format {
        Format::Raw => {
            let etag = format!("\"{cid}.raw\"");
            let body = if head {
                match store.get_size(&cid).await? {
                    Some(size) => (None, size),
                    None => return absent(),
                }
            } else {
                match store.get(&cid).await? {
                    Some(data) => {
                        let n = data.len() as u64;
                        (Some(data), n)
                    }
                    None => return absent(),
                }
            };
            let mut resp = common_headers(&cid, &etag, RAW, "bin", from_accept.then_some("raw"));
            if not_modified(headers, &etag) {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                return Ok(resp);
            }
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, body.1.into());
            if let Some(data) = body.0 {
                *resp.body_mut() = Body::from(data);
            }
            Ok(resp)
        }
        Format::Car => {
            let scope = match q.dag_scope.as_deref() {
                None | Some("all") | Some("entity") => Scope::All,
                Some("block") => Scope::Block,
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "dag-scope={other}: expected block, entity or all"
                    )))
                }
            };
            if q.car_version.as_deref().is_some_and(|v| v != "1") {
                return Err(ApiError::NotAcceptable(
                    "only CAR version 1 is served".into(),
                ));
            }
            let etag = format!(
                "W/\"{cid}.car.{}\"",
                if scope == Scope::Block {
                    "block"
                } else {
                    "all"
                }
            );
            let mut resp =
                common_headers(&cid, &etag, CAR_TYPE, "car", from_accept.then_some("car"));
            if head {
                if !store.has(&cid).await? {
                    return absent();
                }
                return Ok(resp);
            }
            if not_modified(headers, &etag) {
                if !store.has(&cid).await? {
                    return absent();
                }
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                return Ok(resp);
            }
            let Some(stream) = dag::car_stream(store, cid, scope).await? else {
                return absent();
            };
            *resp.body_mut() = Body::from_stream(stream.map(|r| {
                r.map_err(|e| {
                    tracing::warn!(cause = %e, "CAR stream cut short");
                    std::io::Error::other(e.to_string())
                })
            }));
            Ok(resp)
        }
    }
}

/// `format` wins over `Accept`; returns whether the format came only from
/// `Accept` (then `Content-Location` names the explicit URL).
fn negotiate(format: Option<&str>, headers: &HeaderMap) -> Result<(Format, bool), ApiError> {
    match format {
        Some("raw") => return Ok((Format::Raw, false)),
        Some("car") => return Ok((Format::Car, false)),
        Some(other) => {
            return Err(ApiError::NotAcceptable(format!(
                "format={other} is not served: this gateway serves format=raw and format=car"
            )))
        }
        None => (),
    }
    let accept = super::accepted(headers);
    for t in &accept {
        let mut parts = t.split(';').map(str::trim);
        match parts.next() {
            Some(RAW) => return Ok((Format::Raw, true)),
            Some(CAR) => {
                if parts.any(|p| p.starts_with("version=") && p != "version=1") {
                    continue;
                }
                return Ok((Format::Car, true));
            }
            _ => (),
        }
    }
    if accept.is_empty() || accept.iter().all(|t| t.starts_with("*/*")) {
        Err(ApiError::BadRequest(format!(
            "this is a trustless gateway: ask for ?format=raw or ?format=car, or send Accept: {RAW} or {CAR}"
        )))
    } else {
        Err(ApiError::NotAcceptable(format!(
            "cannot serve {}: this gateway serves {RAW} and {CAR} (version=1)",
            accept.join(", ")
        )))
    }
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn common_headers(
    cid: &Cid,
    etag: &str,
    content_type: &str,
    ext: &str,
    location_format: Option<&str>,
) -> Response {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    let val = |s: String| HeaderValue::from_str(&s).expect("ASCII header");
    h.insert(header::CONTENT_TYPE, val(content_type.into()));
    h.insert(header::ETAG, val(etag.into()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        header::CONTENT_DISPOSITION,
        val(format!("attachment; filename=\"{cid}.{ext}\"")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert("x-ipfs-path", val(format!("/ipfs/{cid}")));
    h.insert("x-ipfs-roots", val(cid.to_string()));
    if let Some(f) = location_format {
        h.insert(
            header::CONTENT_LOCATION,
            val(format!("/ipfs/{cid}?format={f}")),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::MemBackend;
    use crate::api::Backend;
    use axum::http::Request;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str, accept: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(r: Response) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn any_page_may_read_it_and_preflights_are_answered() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let app = router(ns, &ApiOptions::with_defaults(None));
        let cid = cidutil::compute(cidutil::codec::RAW, 0x12, b"x").unwrap();
        for uri in [
            format!("/ipfs/{cid}"),
            format!("/routing/v1/providers/{cid}"),
        ] {
            let req = Request::builder()
                .method("OPTIONS")
                .uri(&uri)
                .header(header::ORIGIN, "https://example.org")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "cache-control")
                .body(Body::empty())
                .unwrap();
            let r = app.clone().oneshot(req).await.unwrap();
            assert!(r.status().is_success(), "{uri}: {}", r.status());
            let h = r.headers();
            assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{uri}");
            let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap();
            assert!(
                methods.contains("GET") && methods.contains("OPTIONS"),
                "{methods}"
            );
            assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "*", "{uri}");
            // And the answers themselves, errors included.
            let req = Request::builder()
                .uri(&uri)
                .header(header::ORIGIN, "https://example.org")
                .body(Body::empty())
                .unwrap();
            let r = app.clone().oneshot(req).await.unwrap();
            assert_eq!(
                r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
                "*",
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn raw_head_car_and_errors() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let data = Bytes::from_static(b"gateway test block");
        let cid = cidutil::compute(cidutil::codec::RAW, 0x12, &data).unwrap();
        ns.put(&cid, data.clone()).await.unwrap();
        let app = router(ns, &ApiOptions::with_defaults(None));

        let r = call(&app, "GET", &format!("/ipfs/{cid}?format=raw"), None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], RAW);
        assert_eq!(r.headers()[header::ETAG], format!("\"{cid}.raw\"").as_str());
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(
            r.headers()[header::CONTENT_DISPOSITION],
            format!("attachment; filename=\"{cid}.bin\"").as_str()
        );
        assert!(r.headers().get(header::CONTENT_LOCATION).is_none());
        assert_eq!(body(r).await, data);

        let r = call(&app, "GET", &format!("/ipfs/{cid}"), Some(RAW)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_LOCATION],
            format!("/ipfs/{cid}?format=raw").as_str()
        );

        let r = call(&app, "HEAD", &format!("/ipfs/{cid}?format=raw"), None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            data.len().to_string().as_str()
        );
        assert!(body(r).await.is_empty());

        let r = call(&app, "GET", &format!("/ipfs/{cid}?format=car"), None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], CAR_TYPE);
        let car = body(r).await;
        let summary = dag::import_car(&crate::store::MemBlockStore::new(), &car[..], |_| ())
            .await
            .unwrap();
        assert_eq!(summary.blocks, 1);

        let absent = cidutil::compute(cidutil::codec::RAW, 0x12, b"nope").unwrap();
        for m in ["GET", "HEAD"] {
            let r = call(&app, m, &format!("/ipfs/{absent}?format=raw"), None).await;
            assert_eq!(r.status(), 404, "{m}");
        }
        let r = call(&app, "GET", "/ipfs/not-a-cid?format=raw", None).await;
        assert_eq!(r.status(), 400);
        let r = call(&app, "GET", &format!("/ipfs/{cid}?format=dag-json"), None).await;
        assert_eq!(r.status(), 406);
        let r = call(&app, "GET", &format!("/ipfs/{cid}"), Some("text/html")).await;
        assert_eq!(r.status(), 406);
        let r = call(&app, "GET", &format!("/ipfs/{cid}"), None).await;
        assert_eq!(r.status(), 400);
        let r = call(&app, "POST", &format!("/ipfs/{cid}?format=raw"), None).await;
        assert_eq!(r.status(), 405, "read-only");

        // The probe.
        let r = call(&app, "GET", "/ipfs/bafkqaaa?format=raw", None).await;
        assert_eq!(r.status(), 200);
        assert!(body(r).await.is_empty());
        let r = call(&app, "GET", "/ipfs/bafkqaaa?format=car", None).await;
        assert_eq!(r.status(), 200);
    }
}
