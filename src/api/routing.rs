//! Delegated routing (the Routing V1 HTTP API), on the gateway's listener:
//! `GET /routing/v1/providers/{cid}` names this gateway as a
//! `transport-ipfs-gateway-http` provider of the blocks the store holds,
//! so that kubo (`HTTPRetrieval`), Helia and rainbow-like clients given our
//! URL as their router fetch straight from it, without a bitswap peer.
//!
//! A block the store does not hold gets an empty list (200, as the spec
//! asks; clients read 404 the same way), answered from the presence
//! filter: no cluster request for absent blocks. Peers and IPNS are not
//! served (501).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::cid as cidutil;
use crate::store::BlockStore;

/// The transfer protocol a trustless gateway offers (IPIP-484 names).
pub(crate) const GATEWAY_PROTOCOL: &str = "transport-ipfs-gateway-http";

const NDJSON: &str = "application/x-ndjson";

/// How long a client may cache an answer naming us (a block, once held,
/// stays until deleted) and an empty one (the block may arrive).
const CACHE_FOUND: &str =
    "public, max-age=300, stale-while-revalidate=172800, stale-if-error=172800";
const CACHE_EMPTY: &str = "public, max-age=15, stale-while-revalidate=300, stale-if-error=300";

/// What the router says of this gateway.
#[derive(Debug, Clone)]
pub(crate) struct Provider {
    /// The peer id clients need to hold a record (ours names no libp2p
    /// host; only the addresses are dialled, over HTTP).
    pub(crate) id: String,
    /// Multiaddrs of the gateway, each ending in `/http` or `/https`.
    pub(crate) addrs: Vec<String>,
}

impl Provider {
    /// The provider record, if any address passes the request's filters.
    fn record(&self, q: &RoutingQuery) -> Option<serde_json::Value> {
        if let Some(protocols) = &q.filter_protocols {
            let wanted = list(protocols);
            let ok = wanted.is_empty()
                || wanted
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(GATEWAY_PROTOCOL));
            if !ok {
                return None;
            }
        }
        let addrs: Vec<&String> = match &q.filter_addrs {
            None => self.addrs.iter().collect(),
            Some(f) => self
                .addrs
                .iter()
                .filter(|a| addr_passes(a, &list(f)))
                .collect(),
        };
        (!addrs.is_empty()).then(|| {
            json!({
                "Schema": "peer",
                "ID": self.id,
                "Addrs": addrs,
                "Protocols": [GATEWAY_PROTOCOL],
            })
        })
    }
}

fn list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// IPIP-484's address filter: an address passes if it has a protocol the
/// filter names and none it names with `!`. (`unknown` asks for providers
/// whose addresses are unknown; ours are known, so it matches none.)
fn addr_passes(addr: &str, filter: &[&str]) -> bool {
    let protos: Vec<&str> = addr.split('/').filter(|p| !p.is_empty()).collect();
    let has = |name: &str| protos.iter().any(|p| p.eq_ignore_ascii_case(name));
    let (neg, pos): (Vec<&str>, Vec<&str>) = filter.iter().partition(|f| f.starts_with('!'));
    if neg.iter().any(|n| has(&n[1..])) {
        return false;
    }
    pos.is_empty() || pos.iter().any(|p| has(p))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RoutingQuery {
    filter_protocols: Option<String>,
    filter_addrs: Option<String>,
}

/// The routing routes, to merge into the gateway's.
/// Methods and paths of the API this router does not serve get 501, paths
/// outside the API 400, as the spec's error codes say.
pub(crate) fn router<S: BlockStore + Clone>(store: S, provider: Provider) -> Router {
    Router::new()
        .route(
            "/routing/v1/providers/{cid}",
            get(providers::<S>).fallback(not_served),
        )
        .route("/routing/v1/providers", any(not_served))
        .route("/routing/v1/peers/{id}", any(not_served))
        .route("/routing/v1/peers", any(not_served))
        .route("/routing/v1/ipns/{name}", any(not_served))
        .route("/routing/v1/{*rest}", any(unknown_path))
        .route("/routing/v1", any(unknown_path))
        .with_state((store, Arc::new(provider)))
}

async fn not_served() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        "this router answers GET /routing/v1/providers/{cid} only\n",
    )
        .into_response()
}

async fn unknown_path() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "not a Routing V1 path: this router answers GET /routing/v1/providers/{cid}\n",
    )
        .into_response()
}

async fn providers<S: BlockStore + Clone>(
    State((store, provider)): State<(S, Arc<Provider>)>,
    Path(cid): Path<String>,
    Query(q): Query<RoutingQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cid = cidutil::parse(&cid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let record = if store.has(&cid).await? {
        provider.record(&q)
    } else {
        None
    };
    // Streamed only when asked for (kubo asks only for it).
    let ndjson = super::accepted(&headers)
        .iter()
        .any(|t| super::media_type(t) == NDJSON);
    let (content_type, body) = if ndjson {
        let line = record
            .as_ref()
            .map(|r| format!("{r}\n"))
            .unwrap_or_default();
        (NDJSON, line)
    } else {
        let all: Vec<_> = record.iter().collect();
        ("application/json", json!({ "Providers": all }).to_string())
    };
    let cache = if record.is_some() {
        CACHE_FOUND
    } else {
        CACHE_EMPTY
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    // The answer is as of now (the spec asks for it, for caches).
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&now).expect("an HTTP date is a header value"),
    );
    Ok(resp)
}

/// Why a configured gateway address is not one clients can use, if it is
/// not: `/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/http|https` (or
/// `/tls/http`).
pub(crate) fn check_gateway_addr(addr: &str) -> Result<(), String> {
    let parts: Vec<&str> = addr.split('/').collect();
    let ok = match parts.as_slice() {
        ["", host, value, "tcp", port, rest @ ..] => {
            ["ip4", "ip6", "dns", "dns4", "dns6"].contains(host)
                && match *host {
                    "ip4" => value.parse::<std::net::Ipv4Addr>().is_ok(),
                    "ip6" => value.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => !value.is_empty(),
                }
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && matches!(rest, ["http"] | ["https"] | ["tls", "http"])
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "gateway address {addr:?} is not a multiaddr like /ip4/192.0.2.1/tcp/8080/http or /dns4/gw.example.org/tcp/443/https"
        ))
    }
}

/// The address announced for a gateway listening on `addr` when none is
/// configured: none if it listens on every interface (which one would
/// clients reach?).
pub(crate) fn listening_addr(addr: std::net::SocketAddr) -> Option<String> {
    if addr.ip().is_unspecified() {
        return None;
    }
    Some(match addr.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/{}/http", addr.port()),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/{}/http", addr.port()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::MemBackend;
    use crate::api::Backend;
    use axum::body::Body;
    use axum::http::Request;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(
        app: &Router,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let r = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = r.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn providers_name_us_for_held_blocks_only() {
        let ns = MemBackend::default().namespace("default").unwrap();
        let data = Bytes::from_static(b"routed block");
        let cid = cidutil::compute(cidutil::codec::RAW, 0x12, &data).unwrap();
        ns.put(&cid, data).await.unwrap();
        let provider = Provider {
            id: "12D3KooWCjfPiojcCUmv78Wd1NJzi4Mraj1moxigp7AfQVQvGLwH".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/8080/http".into()],
        };
        let app = router(ns, provider);

        let (status, h, body) = call(&app, &format!("/routing/v1/providers/{cid}"), None).await;
        assert_eq!(status, 200);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(h[header::VARY], "Accept");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"Providers": [{
                "Schema": "peer",
                "ID": "12D3KooWCjfPiojcCUmv78Wd1NJzi4Mraj1moxigp7AfQVQvGLwH",
                "Addrs": ["/ip4/127.0.0.1/tcp/8080/http"],
                "Protocols": ["transport-ipfs-gateway-http"],
            }]})
        );

        // Streamed when asked for, as kubo does.
        let uri = format!("/routing/v1/providers/{cid}?filter-protocols=unknown,transport-bitswap,transport-ipfs-gateway-http");
        let (status, h, body) = call(&app, &uri, Some(NDJSON)).await;
        assert_eq!(status, 200);
        assert_eq!(h[header::CONTENT_TYPE], NDJSON);
        assert_eq!(body.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        assert_eq!(line["Protocols"][0], GATEWAY_PROTOCOL);

        // Filters that exclude us, and Helia's, which does not.
        for (q, n) in [
            ("filter-protocols=transport-bitswap", 0),
            ("filter-addrs=https", 0),
            ("filter-addrs=!http", 0),
            ("filter-addrs=https,tcp,webrtc,wss,tls", 1),
            ("filter-addrs=unknown", 0),
            ("filter-addrs=unknown,http", 1),
        ] {
            let (_, _, body) = call(&app, &format!("/routing/v1/providers/{cid}?{q}"), None).await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["Providers"].as_array().unwrap().len(), n, "{q}");
        }

        // An absent block: an empty list, cached briefly.
        let absent = cidutil::compute(cidutil::codec::RAW, 0x12, b"absent").unwrap();
        let (status, h, body) = call(&app, &format!("/routing/v1/providers/{absent}"), None).await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"Providers":[]}"#);
        assert_eq!(h[header::CACHE_CONTROL], CACHE_EMPTY);
        let (status, _, body) = call(
            &app,
            &format!("/routing/v1/providers/{absent}"),
            Some(NDJSON),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));

        // Media types are case-insensitive; q=0 refuses one.
        let (_, h, _) = call(
            &app,
            &format!("/routing/v1/providers/{cid}"),
            Some("Application/X-NDJSON"),
        )
        .await;
        assert_eq!(h[header::CONTENT_TYPE], NDJSON);
        let (_, h, _) = call(
            &app,
            &format!("/routing/v1/providers/{cid}"),
            Some("application/x-ndjson;q=0, application/json"),
        )
        .await;
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert!(h.contains_key(header::LAST_MODIFIED));

        let (status, _, _) = call(&app, "/routing/v1/providers/not-a-cid", None).await;
        assert_eq!(status, 400);
        // Outside the API: 400; a method or path of it not served: 501.
        let (status, _, _) = call(&app, "/routing/v1/nothing/here", None).await;
        assert_eq!(status, 400);
        for (method, uri) in [
            ("POST", format!("/routing/v1/providers/{cid}")),
            ("PUT", "/routing/v1/providers".to_string()),
            ("PUT", "/routing/v1/ipns/k51qzi5uqu5dg".to_string()),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let status = app.clone().oneshot(req).await.unwrap().status();
            assert_eq!(status, 501, "{method} {uri}");
        }
        let (status, _, _) = call(
            &app,
            "/routing/v1/peers/12D3KooWCjfPiojcCUmv78Wd1NJzi4Mraj1moxigp7AfQVQvGLwH",
            None,
        )
        .await;
        assert_eq!(status, 501);
    }

    #[test]
    fn gateway_addresses_are_checked() {
        for ok in [
            "/ip4/192.0.2.1/tcp/8080/http",
            "/ip6/::1/tcp/80/http",
            "/dns4/gw.example.org/tcp/443/https",
            "/dns/gw.example.org/tcp/443/tls/http",
        ] {
            assert_eq!(check_gateway_addr(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "http://127.0.0.1:8080",
            "/ip4/300.0.0.1/tcp/8080/http",
            "/ip4/127.0.0.1/tcp/0/http",
            "/ip4/127.0.0.1/udp/8080/http",
            "/ip4/127.0.0.1/tcp/8080",
            "/ip4/127.0.0.1/tcp/8080/p2p-circuit",
        ] {
            assert!(check_gateway_addr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            listening_addr("127.0.0.1:8080".parse().unwrap()).as_deref(),
            Some("/ip4/127.0.0.1/tcp/8080/http")
        );
        assert_eq!(listening_addr("0.0.0.0:8080".parse().unwrap()), None);
    }
}
