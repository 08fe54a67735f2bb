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
use crate::dag::{self, CarOptions, Scope};
use crate::store::BlockStore;
use crate::unixfs::ByteRange;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
const IMMUTABLE: &str = "public, max-age=29030400, immutable";

/// The gateway's routes.
pub(crate) fn router<S: BlockStore + Clone>(store: S, opts: &ApiOptions) -> Router {
    let routes = Router::new()
        .route("/ipfs/{cid}", get(block::<S>))
        .route("/ipfs/{cid}/", get(block::<S>))
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
        .expose_headers(tower_http::cors::Any)
        // The answer is the same for every origin: no `Vary` that would
        // split caches of immutable blocks by origin.
        .vary([])
        .max_age(std::time::Duration::from_secs(86400));
    limited(routes, opts, opts.request_timeout * 10).layer(cors)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct GatewayQuery {
    format: Option<String>,
    dag_scope: Option<String>,
    entity_bytes: Option<String>,
    car_version: Option<String>,
    car_order: Option<String>,
    car_dups: Option<String>,
    filename: Option<String>,
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
    Path((cid, _)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Query<GatewayQuery>,
    headers: HeaderMap,
) -> Response {
    // The path as sent, still percent-encoded: split on `/` first, then
    // decoded segment by segment, so that `%2F` stays inside its name.
    let raw = uri.path().splitn(4, '/').nth(3).unwrap_or("").to_string();
    respond(state, method, cid, Some(raw), q, headers).await
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
    let only_if_cached = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("only-if-cached"));
    let not_cached = || ApiError::NotCached(format!("block {cid} is not in this store"));
    if only_if_cached && !store.has(&cid).await? {
        // Whatever else the request says: the client only wants to know
        // whether we hold the block, and we do not.
        return Err(not_cached());
    }
    let (format, from_accept, accepted) = negotiate(q.format.as_deref(), headers)?;
    let path = path_segments(path.as_deref().unwrap_or(""))?;
    let head = method == Method::HEAD;
    let absent = || {
        Err(if only_if_cached {
            not_cached()
        } else {
            ApiError::NotFound(format!("block {cid} is not stored here"))
        })
    };
    // Percent-encoded, segment by segment, as headers need it.
    let url_path = path.iter().fold(format!("/ipfs/{cid}"), |mut p, seg| {
        p.push('/');
        p.extend(percent_encoding::utf8_percent_encode(seg, NAME));
        p
    });
    match format {
        Format::Raw => {
            let raw_etag = |c: &Cid| format!("\"{c}.raw\"");
            let (etag, data, size) = if !path.is_empty() {
                // The block at the end of the path (a client verifies the
                // path with a CAR; this is the terminal's bytes alone).
                let Some(resolved) = dag::resolve(&store, cid, &path)
                    .await
                    .map_err(|e| ApiError::from_stored(e, only_if_cached))?
                else {
                    return absent();
                };
                let (terminal, data) = resolved.terminal().clone();
                let n = data.len() as u64;
                (raw_etag(&terminal), Some(data), n)
            } else if head {
                match store.get_size(&cid).await? {
                    Some(size) => (raw_etag(&cid), None, size),
                    None => return absent(),
                }
            } else {
                match store.get(&cid).await? {
                    Some(data) => {
                        let n = data.len() as u64;
                        (raw_etag(&cid), Some(data), n)
                    }
                    None => return absent(),
                }
            };
            let mut resp = common_headers(
                &cid,
                &url_path,
                &etag,
                RAW,
                &download_name(&q, &cid, &path, "bin"),
                from_accept.then_some("raw"),
            );
            if not_modified(headers, &etag) {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                return Ok(resp);
            }
            let h = resp.headers_mut();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            let data = data.filter(|_| !head);
            match requested_part(headers, &etag, size) {
                Part::Whole => {
                    h.insert(header::CONTENT_LENGTH, size.into());
                    if let Some(data) = data {
                        *resp.body_mut() = Body::from(data);
                    }
                }
                Part::Range(from, to) => {
                    let range = format!("bytes {from}-{to}/{size}");
                    h.insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&range).expect("ASCII"),
                    );
                    h.insert(header::CONTENT_LENGTH, (to - from + 1).into());
                    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                    if let Some(data) = data {
                        *resp.body_mut() = Body::from(data.slice(from as usize..=to as usize));
                    }
                }
                Part::Unsatisfiable => {
                    let range = format!("bytes */{size}");
                    h.insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&range).expect("ASCII"),
                    );
                    h.insert(header::CONTENT_LENGTH, 0.into());
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                }
            }
            Ok(resp)
        }
        Format::Car => {
            let params = CarParams::of(&q, accepted.as_deref())?;
            let etag = params.etag(&cid, &url_path);
            let mut resp = common_headers(
                &cid,
                &url_path,
                &etag,
                &params.content_type(),
                &download_name(&q, &cid, &path, "car"),
                from_accept
                    .then(|| format!("car{}", params.location_query()))
                    .as_deref(),
            );
            resp.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
            // The whole path is resolved before the status is sent, so that
            // the walk cannot fail on it once 200 is out. A path that leads
            // nowhere is a 200 CAR of the blocks that show it (DESIGN.md).
            let Some(resolved) = dag::resolve_or_absent(&store, cid, &path)
                .await
                .map_err(|e| ApiError::from_stored(e, only_if_cached))?
            else {
                return absent();
            };
            if not_modified(headers, &etag) {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                return Ok(resp);
            }
            if head {
                return Ok(resp);
            }
            let stream = dag::car_stream_resolved(store, resolved, params.options);
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

/// The segments of a content path as sent (percent-encoded), each
/// decoded (an encoded `/` stays in its segment), `.` dropped and `..`
/// applied; 400 if `..` leaves the root or a segment is not UTF-8.
fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| ApiError::BadRequest(format!("path segment {raw} is not UTF-8")))?;
        match seg.as_ref() {
            "" | "." => (),
            ".." => {
                if out.pop().is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "path /{path} leaves its root with .."
                    )));
                }
            }
            s => out.push(s.to_string()),
        }
    }
    Ok(out)
}

/// What a CAR request asks for: the query's `dag-scope`, `entity-bytes`,
/// `car-version|order|dups`, and the `Accept` media range's `version`,
/// `order`, `dups` (the query wins).
struct CarParams {
    options: CarOptions,
    /// Echoed as asked (`dfs` or `unk`); the walk is depth-first either way.
    order: String,
}

impl CarParams {
    fn of(q: &GatewayQuery, accepted: Option<&str>) -> Result<Self, ApiError> {
        let from_accept = |key: &str| {
            accepted.and_then(|t| {
                t.split(';').skip(1).find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().to_string())
                })
            })
        };
        let bad = |what: String| ApiError::BadRequest(what);
        if q.car_version.as_deref().is_some_and(|v| v != "1") {
            return Err(bad("car-version: only version 1 is served".into()));
        }
        if from_accept("version").is_some_and(|v| v != "1") {
            return Err(ApiError::NotAcceptable(
                "only CAR version 1 is served".into(),
            ));
        }
        let order = q
            .car_order
            .clone()
            .or_else(|| from_accept("order"))
            .unwrap_or("dfs".into());
        if order != "dfs" && order != "unk" {
            return Err(bad(format!("car order {order}: expected dfs or unk")));
        }
        let dups = match q
            .car_dups
            .clone()
            .or_else(|| from_accept("dups"))
            .as_deref()
        {
            None | Some("n") => false,
            Some("y") => true,
            Some(other) => return Err(bad(format!("car dups {other}: expected y or n"))),
        };
        let range = q
            .entity_bytes
            .as_deref()
            .map(ByteRange::parse)
            .transpose()
            .map_err(bad)?;
        let scope = match q.dag_scope.as_deref() {
            // A range implies the entity (the spec).
            None if range.is_some() => Scope::Entity,
            None | Some("all") => Scope::All,
            Some("entity") => Scope::Entity,
            Some("block") => Scope::Block,
            Some(other) => {
                return Err(bad(format!(
                    "dag-scope={other}: expected block, entity or all"
                )))
            }
        };
        Ok(Self {
            options: CarOptions { scope, range, dups },
            order,
        })
    }

    /// What the explicit URL of this response adds to `format=car` (for
    /// `Content-Location`: parameters that came from `Accept` included).
    fn location_query(&self) -> String {
        let o = &self.options;
        let mut q = String::new();
        match o.scope {
            Scope::All => (),
            Scope::Entity => q.push_str("&dag-scope=entity"),
            Scope::Block => q.push_str("&dag-scope=block"),
        }
        if let Some(r) = o.range {
            let to = r.to.map_or("*".to_string(), |t| t.to_string());
            q.push_str(&format!("&entity-bytes={}:{to}", r.from));
        }
        if self.order != "dfs" {
            q.push_str("&car-order=unk");
        }
        if o.dups {
            q.push_str("&car-dups=y");
        }
        q
    }

    fn content_type(&self) -> String {
        format!(
            "{CAR}; version=1; order={}; dups={}",
            self.order,
            if self.options.dups { "y" } else { "n" }
        )
    }

    /// Weak (the CAR is streamed), and distinct per path, scope, order,
    /// duplicates and range.
    fn etag(&self, cid: &Cid, url_path: &str) -> String {
        let o = &self.options;
        let mut key = url_path.to_string();
        if o.scope != Scope::All {
            key.push_str(&format!("\0scope={:?}", o.scope));
        }
        if self.order != "dfs" {
            key.push_str("\0order=unk");
        }
        if o.dups {
            key.push_str("\0dups=y");
        }
        if let Some(r) = o.range.filter(|r| !r.is_all()) {
            key.push_str(&format!("\0range={}:{:?}", r.from, r.to));
        }
        let digest = garage_util::data::blake2sum(key.as_bytes());
        format!("W/\"{cid}.car.{}\"", hex::encode(&digest.as_slice()[..8]))
    }
}

/// `format` wins over `Accept`. Returns the format, whether it came from
/// `Accept` (then `Content-Location` names the explicit URL), and the CAR
/// media range of `Accept`, whose parameters count even under
/// `format=car`.
fn negotiate(
    format: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Format, bool, Option<String>), ApiError> {
    match format {
        Some("raw") => return Ok((Format::Raw, false, None)),
        Some("car") => {
            let range = super::accepted(headers)
                .into_iter()
                .find(|t| super::media_type(t) == CAR);
            return Ok((Format::Car, false, range));
        }
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
            Some(RAW) => return Ok((Format::Raw, true, None)),
            Some(CAR) => {
                if parts.any(|p| {
                    p.replace(' ', "").starts_with("version=") && p.replace(' ', "") != "version=1"
                }) {
                    continue;
                }
                return Ok((Format::Car, true, Some(t.clone())));
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
        .is_some_and(|v| {
            // Weak comparison (RFC 9110): `W/` does not count.
            let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
            v.split(',')
                .any(|t| t.trim() == "*" || bare(t) == bare(etag))
        })
}

/// Bytes of a name (a path segment, a file name) escaped in headers and
/// URLs: all but the unreserved ones (so `/` inside a name is escaped,
/// not taken for a separator).
const NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a `Range` header asks of a raw block.
#[derive(Debug, PartialEq)]
enum Part {
    Whole,
    /// One range, inclusive (206).
    Range(u64, u64),
    /// A range that starts beyond the end (416).
    Unsatisfiable,
}

/// The part of a raw block of `size` bytes a request asks for: one range
/// is served; several, a malformed header, or an `If-Range` other than the
/// block's tag get the whole block (RFC 9110 lets a server ignore `Range`;
/// the path gateway spec asks for single ranges of raw blocks).
fn requested_part(headers: &HeaderMap, etag: &str, size: u64) -> Part {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Part::Whole;
    };
    if headers
        .get(header::IF_RANGE)
        .is_some_and(|t| t.as_bytes() != etag.as_bytes())
    {
        return Part::Whole;
    }
    match http_range_header::parse_range_header(range).map(|r| r.validate(size)) {
        Ok(Ok(ranges)) if ranges.len() == 1 => Part::Range(*ranges[0].start(), *ranges[0].end()),
        Ok(Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable)) => Part::Unsatisfiable,
        _ => Part::Whole,
    }
}

/// The name a download is saved under: `?filename=` if given, else the
/// CID and the path's last segment.
fn download_name(q: &GatewayQuery, cid: &Cid, path: &[String], ext: &str) -> String {
    match (&q.filename, path.last()) {
        (Some(asked), _) => asked.clone(),
        (None, Some(last)) => format!("{cid}_{last}.{ext}"),
        (None, None) => format!("{cid}.{ext}"),
    }
}

/// `Content-Disposition: attachment` for `name` (RFC 6266): `filename`
/// in ASCII (other characters, quotes, backslashes and controls as `_`),
/// and `filename*` in UTF-8 when that lost anything.
fn content_disposition(name: &str) -> HeaderValue {
    let plain = |c: char| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\';
    let ascii: String = name
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != name {
        value += &format!(
            "; filename*=UTF-8''{}",
            percent_encoding::utf8_percent_encode(name, NAME)
        );
    }
    HeaderValue::from_str(&value).expect("ASCII header")
}

fn common_headers(
    cid: &Cid,
    url_path: &str,
    etag: &str,
    content_type: &str,
    download: &str,
    location_format: Option<&str>,
) -> Response {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    let val = |s: String| HeaderValue::from_str(&s).expect("ASCII header");
    h.insert(header::CONTENT_TYPE, val(content_type.into()));
    h.insert(header::ETAG, val(etag.into()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(download));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert("x-ipfs-path", val(url_path.to_string()));
    h.insert("x-ipfs-roots", val(cid.to_string()));
    if let Some(f) = location_format {
        h.insert(
            header::CONTENT_LOCATION,
            val(format!("{url_path}?format={f}")),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAR_TYPE: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";
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

    /// The CIDs of a CARv1's sections, in order.
    fn car_cids(car: &[u8]) -> Vec<Cid> {
        let (len, rest) = unsigned_varint::decode::u64(car).unwrap();
        let mut rest = &rest[len as usize..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (len, after) = unsigned_varint::decode::u64(rest).unwrap();
            let section = &after[..len as usize];
            let mut cursor = std::io::Cursor::new(section);
            out.push(Cid::read_bytes(&mut cursor).unwrap());
            rest = &after[len as usize..];
        }
        out
    }

    /// A small UnixFS world: a file of four raw leaves, directories (one
    /// HAMT-sharded, with a sub-shard), a dag-cbor document.
    struct World {
        leaves: Vec<Cid>,
        file: Cid,
        half: Cid,
        halves: Cid,
        dir: Cid,
        sub: Cid,
        twice: Cid,
        hamt: Cid,
        shard: Cid,
        hamt_names: [String; 3],
        hamt_targets: [Cid; 3],
        doc: Cid,
    }

    async fn world(ns: &impl BlockStore) -> World {
        use crate::unixfs::{hamt_hash, Data};
        use ipld_dagpb::{PbLink, PbNode};
        let put = |codec: u64, data: Vec<u8>| async move {
            let cid = cidutil::compute(codec, 0x12, &data).unwrap();
            ns.put(&cid, Bytes::from(data)).await.unwrap();
            cid
        };
        let link = |name: Option<String>, cid: Cid| PbLink {
            cid,
            name,
            size: Some(1),
        };
        let pb = |data: Data, links: Vec<PbLink>| {
            PbNode {
                links,
                data: Some(prost::Message::encode_to_vec(&data).into()),
            }
            .into_bytes()
        };
        let dir_data = || Data {
            r#type: Some(1),
            ..Default::default()
        };
        let mut leaves = Vec::new();
        for i in 0..5u8 {
            leaves.push(put(cidutil::codec::RAW, vec![i; 256]).await);
        }
        let file = put(
            cidutil::codec::DAG_PB,
            pb(
                Data {
                    r#type: Some(2),
                    filesize: Some(1024),
                    blocksizes: vec![256; 4],
                    ..Default::default()
                },
                leaves[..4].iter().map(|c| link(None, *c)).collect(),
            ),
        )
        .await;
        let sub = put(
            cidutil::codec::DAG_PB,
            pb(dir_data(), vec![link(Some("b".into()), leaves[4])]),
        )
        .await;
        // A file whose two halves are one node (two leaves).
        let half = put(
            cidutil::codec::DAG_PB,
            pb(
                Data {
                    r#type: Some(2),
                    filesize: Some(512),
                    blocksizes: vec![256; 2],
                    ..Default::default()
                },
                leaves[..2].iter().map(|c| link(None, *c)).collect(),
            ),
        )
        .await;
        let halves = put(
            cidutil::codec::DAG_PB,
            pb(
                Data {
                    r#type: Some(2),
                    filesize: Some(1024),
                    blocksizes: vec![512; 2],
                    ..Default::default()
                },
                vec![link(None, half), link(None, half)],
            ),
        )
        .await;
        let dir = put(
            cidutil::codec::DAG_PB,
            pb(
                dir_data(),
                vec![
                    link(Some("a.txt".into()), file),
                    link(Some("sub".into()), sub),
                ],
            ),
        )
        .await;
        let twice = put(
            cidutil::codec::DAG_PB,
            pb(
                dir_data(),
                vec![
                    link(Some("x".into()), leaves[4]),
                    link(Some("y".into()), leaves[4]),
                ],
            ),
        )
        .await;
        // Two names in one bucket of the root (a sub-shard), one elsewhere.
        let byte = |name: &str, level: u32| (hamt_hash(name.as_bytes()) >> (56 - 8 * level)) as u8;
        let mut first: std::collections::HashMap<u8, String> = Default::default();
        let (a, b) = (0..)
            .map(|i| format!("n{i}"))
            .find_map(|n| match first.get(&byte(&n, 0)) {
                Some(o) if byte(o, 1) != byte(&n, 1) => Some((o.clone(), n)),
                Some(_) => None,
                None => {
                    first.insert(byte(&n, 0), n);
                    None
                }
            })
            .unwrap();
        let c = (0..)
            .map(|i| format!("c{i}"))
            .find(|n| byte(n, 0) != byte(&a, 0))
            .unwrap();
        let shard_data = || Data {
            r#type: Some(5),
            hash_type: Some(0x22),
            fanout: Some(256),
            ..Default::default()
        };
        let targets = [
            put(cidutil::codec::RAW, b"a".to_vec()).await,
            put(cidutil::codec::RAW, b"b".to_vec()).await,
            put(cidutil::codec::RAW, b"c".to_vec()).await,
        ];
        let shard = put(
            cidutil::codec::DAG_PB,
            pb(
                shard_data(),
                vec![
                    link(Some(format!("{:02X}{a}", byte(&a, 1))), targets[0]),
                    link(Some(format!("{:02X}{b}", byte(&b, 1))), targets[1]),
                ],
            ),
        )
        .await;
        let hamt = put(
            cidutil::codec::DAG_PB,
            pb(
                shard_data(),
                vec![
                    link(Some(format!("{:02X}", byte(&a, 0))), shard),
                    link(Some(format!("{:02X}{c}", byte(&c, 0))), targets[2]),
                ],
            ),
        )
        .await;
        let doc = {
            use ipld_core::ipld::Ipld;
            let v = Ipld::Map(
                [
                    (
                        "files".to_string(),
                        Ipld::Map([("single".to_string(), Ipld::Link(leaves[4]))].into()),
                    ),
                    ("n".to_string(), Ipld::Integer(1)),
                ]
                .into(),
            );
            put(
                cidutil::codec::DAG_CBOR,
                serde_ipld_dagcbor::to_vec(&v).unwrap(),
            )
            .await
        };
        World {
            leaves,
            file,
            half,
            halves,
            dir,
            sub,
            twice,
            hamt,
            shard,
            hamt_names: [a, b, c],
            hamt_targets: targets,
            doc,
        }
    }

    #[tokio::test]
    async fn paths_scopes_ranges_and_dups_in_cars() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let w = world(&ns).await;
        let app = router(ns, &ApiOptions::with_defaults(None));
        let get = |uri: String| {
            let app = app.clone();
            async move {
                let r = call(&app, "GET", &uri, None).await;
                let status = r.status();
                let h = r.headers().clone();
                (status, h, body(r).await)
            }
        };
        let cids = |uri: String| {
            let get = &get;
            async move {
                let (status, h, b) = get(uri.clone()).await;
                assert_eq!(status, 200, "{uri}: {}", String::from_utf8_lossy(&b));
                assert_eq!(h[header::ACCEPT_RANGES], "none");
                car_cids(&b)
            }
        };
        let (dir, file, l) = (w.dir, w.file, &w.leaves);

        // Path blocks, then the terminal's DAG (scope all by default).
        assert_eq!(
            cids(format!("/ipfs/{dir}/a.txt?format=car")).await,
            [dir, file, l[0], l[1], l[2], l[3]]
        );
        assert_eq!(
            cids(format!("/ipfs/{dir}/sub/b?format=car")).await,
            [dir, w.sub, l[4]]
        );
        assert_eq!(
            cids(format!(
                "/ipfs/{dir}/./sub/../a.txt?format=car&dag-scope=block"
            ))
            .await,
            [dir, file]
        );
        // A directory's entity is its own block.
        assert_eq!(
            cids(format!("/ipfs/{dir}?format=car&dag-scope=entity")).await,
            [dir]
        );
        // Byte ranges: only the leaves that cover them.
        for (range, want) in [
            ("300:600", vec![l[1], l[2]]),
            ("0:0", vec![l[0]]),
            ("-10:*", vec![l[3]]),
            ("512:-256", vec![l[2], l[3]]),
            ("512:-257", vec![l[2]]),
            ("5000:*", vec![]),
            ("0:*", vec![l[0], l[1], l[2], l[3]]),
        ] {
            let mut expected = vec![dir, file];
            expected.extend(want);
            assert_eq!(
                cids(format!("/ipfs/{dir}/a.txt?format=car&entity-bytes={range}")).await,
                expected,
                "{range}"
            );
        }
        // A node met again under a range still leads to the bytes it
        // covers there (its second half's first leaf), sent once each.
        assert_eq!(
            cids(format!(
                "/ipfs/{}?format=car&entity-bytes=511:512",
                w.halves
            ))
            .await,
            [w.halves, w.half, l[1], l[0]]
        );
        // HAMT: the shards read on the way are path blocks; the entity of
        // a sharded directory is its shards, not their entries.
        let [a, _, c] = &w.hamt_names;
        assert_eq!(
            cids(format!("/ipfs/{}/{a}?format=car", w.hamt)).await,
            [w.hamt, w.shard, w.hamt_targets[0]]
        );
        assert_eq!(
            cids(format!("/ipfs/{}/{c}?format=car", w.hamt)).await,
            [w.hamt, w.hamt_targets[2]]
        );
        assert_eq!(
            cids(format!("/ipfs/{}?format=car&dag-scope=entity", w.hamt)).await,
            [w.hamt, w.shard]
        );
        // dag-cbor: several segments in one block, then its link.
        assert_eq!(
            cids(format!("/ipfs/{}/files/single?format=car", w.doc)).await,
            [w.doc, l[4]]
        );
        assert_eq!(
            cids(format!("/ipfs/{}/n?format=car&dag-scope=entity", w.doc)).await,
            [w.doc]
        );
        // Duplicates only when asked, and said in the Content-Type.
        assert_eq!(
            cids(format!("/ipfs/{}?format=car", w.twice)).await,
            [w.twice, l[4]]
        );
        let (_, h, b) = get(format!("/ipfs/{}?format=car&car-dups=y", w.twice)).await;
        assert_eq!(car_cids(&b), [w.twice, l[4], l[4]]);
        assert_eq!(
            h[header::CONTENT_TYPE],
            "application/vnd.ipld.car; version=1; order=dfs; dups=y"
        );
        let r = call(
            &app,
            "GET",
            &format!("/ipfs/{}", w.twice),
            Some("application/vnd.ipld.car; version=1; order=unk; dups=y"),
        )
        .await;
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/vnd.ipld.car; version=1; order=unk; dups=y"
        );
        assert_eq!(
            r.headers()[header::CONTENT_LOCATION],
            format!("/ipfs/{}?format=car&car-order=unk&car-dups=y", w.twice).as_str()
        );
        assert_eq!(car_cids(&body(r).await).len(), 3);
        // A trailing slash is the same path; a version other than 1 is
        // refused.
        assert_eq!(
            cids(format!("/ipfs/{dir}/?format=car&dag-scope=block")).await,
            [dir]
        );
        let (status, _, _) = get(format!("/ipfs/{dir}?format=car&car-version=2")).await;
        assert_eq!(status, 400);
        // An encoded `/` stays inside its segment: no entry is named so.
        let (status, h, b) = get(format!("/ipfs/{dir}/sub%2Fb?format=car")).await;
        assert_eq!(status, 200);
        assert_eq!(car_cids(&b), [dir], "a missing name, not sub then b");
        assert_eq!(h["x-ipfs-path"], format!("/ipfs/{dir}/sub%2Fb").as_str());
        assert_eq!(path_segments("a%2Fb/./c%20d/e/..").unwrap(), ["a/b", "c d"]);
        assert!(path_segments("%2E%2E").is_err());
        assert!(path_segments("%FF").is_err());
        // Conditional requests: the weak tag matches with or without `W/`.
        let (_, first, _) = get(format!("/ipfs/{dir}/a.txt?format=car")).await;
        let tag = first[header::ETAG].to_str().unwrap().to_string();
        for sent in [tag.clone(), tag.trim_start_matches("W/").to_string()] {
            let req = Request::builder()
                .uri(format!("/ipfs/{dir}/a.txt?format=car"))
                .header(header::IF_NONE_MATCH, sent)
                .body(Body::empty())
                .unwrap();
            assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 304);
        }
        // Each variant its own Etag; the file name says the path's end.
        let etag = |h: &HeaderMap| h[header::ETAG].to_str().unwrap().to_string();
        let (_, all, _) = get(format!("/ipfs/{dir}/a.txt?format=car")).await;
        let (_, block, _) = get(format!("/ipfs/{dir}/a.txt?format=car&dag-scope=block")).await;
        let (_, ranged, _) = get(format!("/ipfs/{dir}/a.txt?format=car&entity-bytes=1:2")).await;
        let (_, root, _) = get(format!("/ipfs/{dir}?format=car")).await;
        let tags = [etag(&all), etag(&block), etag(&ranged), etag(&root)];
        for (i, t) in tags.iter().enumerate() {
            assert!(t.starts_with(&format!("W/\"{dir}.car.")), "{t}");
            assert!(!tags[..i].contains(t), "{tags:?}");
        }
        assert_eq!(
            all[header::CONTENT_DISPOSITION],
            format!("attachment; filename=\"{dir}_a.txt.car\"").as_str()
        );
        assert_eq!(all["x-ipfs-path"], format!("/ipfs/{dir}/a.txt").as_str());
        let (_, named, _) = get(format!("/ipfs/{dir}?format=car&filename=my%20dir.car")).await;
        assert_eq!(
            named[header::CONTENT_DISPOSITION],
            "attachment; filename=\"my dir.car\""
        );
        let (_, named, _) = get(format!(
            "/ipfs/{dir}?format=raw&filename=%C3%A9t%C3%A9%22.bin"
        ))
        .await;
        assert_eq!(
            named[header::CONTENT_DISPOSITION],
            "attachment; filename=\"_t__.bin\"; filename*=UTF-8''%C3%A9t%C3%A9%22.bin"
        );
        // The terminal's bytes alone, as raw.
        let (status, _, b) = get(format!("/ipfs/{dir}/sub/b?format=raw")).await;
        assert_eq!((status, &b[..]), (StatusCode::OK, &[4u8; 256][..]));

        // What leads nowhere: a CAR rooted at the empty identity CID, of
        // the blocks read before the name was missed (as kubo answers);
        // as raw, 404. Bad parameters: 400.
        let empty = cidutil::compute(cidutil::codec::RAW, cidutil::IDENTITY, &[]).unwrap();
        for (missing, walked) in [
            (format!("/ipfs/{dir}/nope"), vec![dir]),
            (format!("/ipfs/{dir}/sub/nope"), vec![dir, w.sub]),
            (format!("/ipfs/{dir}/a.txt/inside"), vec![dir, w.file]),
            (format!("/ipfs/{}/x", l[0]), vec![l[0]]),
        ] {
            let (status, _, b) = get(format!("{missing}?format=car")).await;
            assert_eq!(status, 200, "{missing}: {}", String::from_utf8_lossy(&b));
            let reader = iroh_car::CarReader::new(&b[..]).await.unwrap();
            assert_eq!(reader.header().roots(), [empty], "{missing}");
            assert_eq!(car_cids(&b), walked, "{missing}");
            let (status, _, _) = get(format!("{missing}?format=raw")).await;
            assert_eq!(status, 404, "{missing}");
        }
        for (missing, may_walk) in [
            (
                format!("/ipfs/{}/zzz-not-there?format=car", w.hamt),
                vec![w.hamt, w.shard],
            ),
            (
                format!("/ipfs/{}/files/none?format=car", w.doc),
                vec![w.doc],
            ),
        ] {
            let (status, _, b) = get(missing.clone()).await;
            assert_eq!(status, 200, "{missing}");
            let reader = iroh_car::CarReader::new(&b[..]).await.unwrap();
            assert_eq!(reader.header().roots(), [empty], "{missing}");
            let walked = car_cids(&b);
            assert_eq!(walked.first(), may_walk.first(), "{missing}");
            assert!(
                walked.iter().all(|c| may_walk.contains(c)),
                "{missing}: {walked:?}"
            );
        }
        // The identity root is never written as a section.
        let (status, _, b) = get("/ipfs/bafkqaaa/x?format=car".into()).await;
        assert_eq!(status, 200);
        assert!(car_cids(&b).is_empty());
        for bad in [
            format!("/ipfs/{dir}/../x?format=car"),
            format!("/ipfs/{dir}?format=car&dag-scope=most"),
            format!("/ipfs/{dir}?format=car&entity-bytes=9:2"),
            format!("/ipfs/{dir}?format=car&car-dups=maybe"),
            format!("/ipfs/{dir}?format=car&car-order=bfs"),
        ] {
            let (status, _, _) = get(bad.clone()).await;
            assert_eq!(status, 400, "{bad}");
        }
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

    /// A path through a block that is not stored is 404 (412 with
    /// only-if-cached), never a proof of absence; through a block that
    /// cannot be decoded, 500; through a codec we do not read, 501.
    #[tokio::test]
    async fn paths_through_missing_broken_and_unknown_blocks() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let w = world(&ns).await;
        ns.delete(&w.sub).await.unwrap();
        let put = |codec: u64, data: Vec<u8>| {
            let ns = ns.clone();
            async move {
                let cid = cidutil::compute(codec, 0x12, &data).unwrap();
                ns.put(&cid, Bytes::from(data)).await.unwrap();
                cid
            }
        };
        let json = put(0x0200, br#"{"a":1}"#.to_vec()).await;
        let junk = put(cidutil::codec::DAG_JSON, b"{not json".to_vec()).await;
        let mut map = std::collections::BTreeMap::new();
        map.insert("x".to_string(), ipld_core::ipld::Ipld::Link(junk));
        let doc = put(
            cidutil::codec::DAG_CBOR,
            serde_ipld_dagcbor::to_vec(&ipld_core::ipld::Ipld::Map(map)).unwrap(),
        )
        .await;
        let app = router(ns, &ApiOptions::with_defaults(None));
        let dir = w.dir;
        for (uri, status) in [
            (format!("/ipfs/{dir}/sub/b?format=car"), 404),
            (format!("/ipfs/{dir}/sub/b?format=raw"), 404),
            (format!("/ipfs/{json}/a?format=car"), 501),
            (format!("/ipfs/{doc}/x/y?format=car"), 500),
            (format!("/ipfs/{doc}/x?format=car&dag-scope=block"), 200),
        ] {
            assert_eq!(
                call(&app, "GET", &uri, None).await.status(),
                status,
                "{uri}"
            );
        }
        let req = Request::builder()
            .uri(format!("/ipfs/{dir}/sub/b?format=car"))
            .header(header::CACHE_CONTROL, "only-if-cached")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 412);
    }

    /// Single byte ranges of raw blocks (206, 416), the whole block for
    /// several ranges, a bad header or another `If-Range`; `only-if-cached`
    /// answered before the format is looked at.
    #[tokio::test]
    async fn raw_ranges_and_only_if_cached() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let data = Bytes::from_static(b"gateway test block");
        let cid = cidutil::compute(cidutil::codec::RAW, 0x12, &data).unwrap();
        ns.put(&cid, data.clone()).await.unwrap();
        let app = router(ns, &ApiOptions::with_defaults(None));
        let ask = |method: &'static str, extra: Vec<(header::HeaderName, String)>| {
            let app = app.clone();
            async move {
                let mut req = Request::builder()
                    .method(method)
                    .uri(format!("/ipfs/{cid}?format=raw"));
                for (k, v) in extra {
                    req = req.header(k, v);
                }
                app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
            }
        };
        let range = |r: &str| vec![(header::RANGE, r.to_string())];
        for (asked, from, to) in [
            ("bytes=8-11", 8, 11),
            ("bytes=13-", 13, 17),
            ("bytes=-5", 13, 17),
            ("bytes=10-99", 10, 17),
        ] {
            let r = ask("GET", range(asked)).await;
            assert_eq!(r.status(), 206, "{asked}");
            assert_eq!(
                r.headers()[header::CONTENT_RANGE],
                format!("bytes {from}-{to}/18").as_str()
            );
            assert_eq!(body(r).await, data.slice(from..=to), "{asked}");
            let r = ask("HEAD", range(asked)).await;
            assert_eq!(r.status(), 206, "HEAD {asked}");
            assert_eq!(
                r.headers()[header::CONTENT_LENGTH],
                (to - from + 1).to_string().as_str()
            );
        }
        let r = ask("GET", range("bytes=18-")).await;
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */18");
        for whole in [
            range("bytes=0-1,4-5"),
            range("lines=1-2"),
            vec![
                (header::RANGE, "bytes=0-1".into()),
                (header::IF_RANGE, "\"other\"".into()),
            ],
        ] {
            let r = ask("GET", whole.clone()).await;
            assert_eq!(r.status(), 200, "{whole:?}");
            assert_eq!(r.headers()[header::ACCEPT_RANGES], "bytes");
            assert_eq!(body(r).await, data);
        }
        let r = ask(
            "GET",
            vec![
                (header::RANGE, "bytes=0-1".into()),
                (header::IF_RANGE, format!("\"{cid}.raw\"")),
            ],
        )
        .await;
        assert_eq!(r.status(), 206);

        // A stored block that cannot be decoded on the way: the content's
        // fault, 500 (the block itself is still served as raw).
        let junk = Bytes::from_static(b"\xff\xff not dag-pb");
        let bad = cidutil::compute(cidutil::codec::DAG_PB, 0x12, &junk).unwrap();
        let ns2 = MemBackend::default().namespace("default").unwrap();
        ns2.put(&bad, junk.clone()).await.unwrap();
        let app2 = router(ns2, &ApiOptions::with_defaults(None));
        for (uri, status) in [
            (format!("/ipfs/{bad}/a?format=car"), 500),
            (format!("/ipfs/{bad}/a?format=raw"), 500),
            (format!("/ipfs/{bad}?format=raw"), 200),
        ] {
            assert_eq!(
                call(&app2, "GET", &uri, None).await.status(),
                status,
                "{uri}"
            );
        }

        // If-None-Match wins over Range.
        let r = ask(
            "GET",
            vec![
                (header::RANGE, "bytes=0-1".into()),
                (header::IF_NONE_MATCH, format!("\"{cid}.raw\"")),
            ],
        )
        .await;
        assert_eq!(r.status(), 304);

        // only-if-cached: 412 for an absent block even with no format; a
        // held block is served as asked.
        let absent = cidutil::compute(cidutil::codec::RAW, 0x12, b"nope").unwrap();
        for (uri, status) in [
            (format!("/ipfs/{absent}"), 412),
            (format!("/ipfs/{absent}/a/b?format=car"), 412),
            (format!("/ipfs/{cid}?format=raw"), 200),
        ] {
            let req = Request::builder()
                .uri(&uri)
                .header(header::CACHE_CONTROL, "only-if-cached")
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                app.clone().oneshot(req).await.unwrap().status(),
                status,
                "{uri}"
            );
        }
    }
}
