//! The daemon's surfaces over a store: the trustless gateway, the kubo RPC
//! subset and the gRPC service, with their limits, write authorisation and
//! graceful shutdown.
//!
//! Servers take bound listeners and a shutdown future, so tests bind
//! `127.0.0.1:0` and run the daemon in-process. Everything is generic over
//! a [`Backend`]: the Garage store in production, memory in unit tests.

mod conn;
pub(crate) mod error;
pub(crate) mod gateway;
pub mod grpc;
pub(crate) mod kubo;
pub(crate) mod metrics;
pub(crate) mod routing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::config::{ApiConfig, ConfigError, Secret};
use crate::store::{self, BlockStore, GarageStore, Namespace};

/// Where the API finds namespaces.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A namespace's store.
    type Ns: BlockStore + Clone;
    /// The store of a namespace (the name is checked).
    fn namespace(&self, name: &str) -> Result<Self::Ns, store::Error>;

    /// Whether a namespace is registered (`namespace create`, or the
    /// daemon's own): clients that must not write into a mistyped
    /// namespace ask this first.
    fn is_registered(&self, name: &str) -> impl Future<Output = Result<bool, store::Error>> + Send;

    /// The Garage store, whose figures `/metrics` shows.
    fn garage_store(&self) -> Option<&GarageStore> {
        None
    }
}

impl Backend for Arc<GarageStore> {
    type Ns = Namespace;
    fn namespace(&self, name: &str) -> Result<Namespace, store::Error> {
        GarageStore::namespace(self, name)
    }

    async fn is_registered(&self, name: &str) -> Result<bool, store::Error> {
        Ok(self.namespace_record(name).await?.is_some())
    }

    fn garage_store(&self) -> Option<&GarageStore> {
        Some(self)
    }
}

/// The three listeners.
pub struct Listeners {
    /// Trustless gateway.
    pub gateway: TcpListener,
    /// Kubo RPC.
    pub rpc: TcpListener,
    /// gRPC.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(api: &ApiConfig) -> std::io::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
            })
        };
        Ok(Self {
            gateway: bind(api.gateway_addr, "gateway_addr").await?,
            rpc: bind(api.rpc_addr, "rpc_addr").await?,
            grpc: bind(api.grpc_addr, "grpc_addr").await?,
        })
    }

    /// Binds free ports on 127.0.0.1 (tests).
    pub async fn bind_loopback() -> std::io::Result<Self> {
        Ok(Self {
            gateway: TcpListener::bind("127.0.0.1:0").await?,
            rpc: TcpListener::bind("127.0.0.1:0").await?,
            grpc: TcpListener::bind("127.0.0.1:0").await?,
        })
    }

    /// The bound addresses: gateway, RPC, gRPC.
    pub fn addrs(&self) -> std::io::Result<[SocketAddr; 3]> {
        Ok([
            self.gateway.local_addr()?,
            self.rpc.local_addr()?,
            self.grpc.local_addr()?,
        ])
    }
}

/// Runtime options of the surfaces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiOptions {
    /// Namespace of the gateway and the kubo RPC.
    pub namespace: String,
    /// Bearer token writes need.
    pub write_token: Option<Secret>,
    /// Accept writes without a token on loopback listeners.
    pub allow_anonymous_writes_on_loopback: bool,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest CAR for `dag/import`.
    pub max_car_bytes: usize,
    /// Requests at once per surface.
    pub max_concurrent_requests: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Deadline for a request's headers (and an idle connection's next).
    pub header_read_timeout: Duration,
    /// Open connections per listener (HTTP and gRPC).
    pub max_connections: usize,
    /// Public key reported as the node's peer id by `/api/v0/id` and in
    /// delegated routing's provider records.
    pub peer_key: [u8; 32],
    /// The gateway's addresses for delegated routing (empty: its
    /// listening address, see [`ApiConfig::gateway_public_addrs`]).
    pub gateway_public_addrs: Vec<String>,
}

impl ApiOptions {
    /// Options from the config (resolves the write token).
    pub fn from_config(api: &ApiConfig, peer_key: [u8; 32]) -> Result<Self, ConfigError> {
        Ok(Self {
            namespace: api.namespace.clone(),
            write_token: api.resolve_write_token()?,
            allow_anonymous_writes_on_loopback: api.allow_anonymous_writes_on_loopback,
            max_body_bytes: api.max_body_bytes,
            max_car_bytes: api.max_car_bytes,
            max_concurrent_requests: api.max_concurrent_requests,
            request_timeout: Duration::from_secs(api.request_timeout_secs),
            header_read_timeout: Duration::from_secs(api.header_read_timeout_secs),
            max_connections: api.max_connections,
            peer_key,
            gateway_public_addrs: api
                .gateway_public_addrs
                .iter()
                .map(|a| {
                    routing::check_gateway_addr(a)
                        .map(|()| a.clone())
                        .map_err(ConfigError::Invalid)
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// The defaults of [`ApiConfig`] (namespace `default`, its limits and
    /// deadlines) with the given write token: for a program that serves
    /// the surfaces without a config file.
    pub fn with_defaults(write_token: Option<&str>) -> Self {
        Self::from_config(&ApiConfig::default(), [7; 32])
            .map(|o| Self {
                write_token: write_token.map(Secret::from),
                ..o
            })
            .expect("defaults are valid")
    }

    /// Sets the namespace of the gateway and the kubo RPC.
    pub fn with_namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }
}

/// Who may write on one listener.
#[derive(Debug, Clone)]
pub struct WriteAuth {
    token: Option<Secret>,
    anonymous: bool,
}

impl WriteAuth {
    /// The rule for a listener bound to `addr`.
    pub fn new(opts: &ApiOptions, addr: SocketAddr) -> Self {
        Self {
            token: opts.write_token.clone(),
            anonymous: opts.write_token.is_none()
                && opts.allow_anonymous_writes_on_loopback
                && addr.ip().is_loopback(),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if self.anonymous {
            return Ok(());
        }
        let Some(token) = &self.token else {
            // No token configured and anonymous writes not allowed here:
            // the surface is read-only.
            return Err(ApiError::Unauthorized);
        };
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Checks the headers of an HTTP request.
    pub fn check_headers(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answer of the load-shedding layer: 503 with `Retry-After`.
async fn overloaded(err: axum::BoxError) -> axum::response::Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "too many requests in flight; retry shortly\n",
        )
            .into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
    }
}

/// The media ranges a request's `Accept` headers list, in order, lower
/// case, with their parameters (`type/subtype; a=b`), less those refused
/// with `q=0`.
pub(crate) fn accepted(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .filter(|t| {
            !t.split(';')
                .skip(1)
                .map(|p| p.trim().replace(' ', ""))
                .any(|p| {
                    p.strip_prefix("q=")
                        .is_some_and(|q| q.parse::<f32>() == Ok(0.0))
                })
        })
        .collect()
}

/// The media type of a media range from [`accepted`], without parameters.
pub(crate) fn media_type(range: &str) -> &str {
    range.split(';').next().unwrap_or("").trim()
}

/// Wraps a router with the concurrency limit (503 beyond it) and a
/// deadline (408 past it).
fn limited<St: Clone + Send + Sync + 'static>(
    router: axum::Router<St>,
    opts: &ApiOptions,
    timeout: Duration,
) -> axum::Router<St> {
    use tower::ServiceBuilder;
    router.layer(
        ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(overloaded))
            .load_shed()
            .concurrency_limit(opts.max_concurrent_requests)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            )),
    )
}

/// Serves one HTTP listener until `shutdown`, then lets the connections
/// finish their requests. Unlike `axum::serve`, it bounds what a client
/// can hold: headers must arrive within `header_read_timeout` (slow or
/// idle clients are disconnected), and at most `max_connections` are open
/// (more wait in the kernel's accept queue, not in our memory).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    opts: &ApiOptions,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut admitted = conn::admit(listener, opts.max_connections, 1, opts.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1 only (what the gateway and kubo clients speak): the protocol
    // sniffing of the auto builder would wait, with no deadline, for the
    // first byte of a connection that never sends one.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            s = admitted.recv() => match s {
                Some(s) => s,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// Serves the three surfaces until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve<B: Backend>(
    listeners: Listeners,
    backend: B,
    opts: ApiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let [gw_addr, rpc_addr, grpc_addr] = listeners.addrs()?;
    let ns = backend
        .namespace(&opts.namespace)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut opts = opts;
    if opts.gateway_public_addrs.is_empty() {
        match routing::listening_addr(gw_addr) {
            Some(a) => {
                if gw_addr.ip().is_loopback() {
                    tracing::info!(
                        gateway = %a,
                        "delegated routing names the gateway at a loopback address: only clients \
                         on this host can use it (set api.gateway_public_addrs for others)"
                    );
                }
                opts.gateway_public_addrs.push(a)
            }
            None => tracing::warn!(
                gateway = %gw_addr,
                "the gateway listens on every interface and api.gateway_public_addrs is empty: \
                 delegated routing will name no provider"
            ),
        }
    }
    let gateway = gateway::router(ns.clone(), &opts).layer(metrics::Observe("gateway"));
    let for_metrics = backend.clone();
    let rpc = kubo::router(ns, &opts, WriteAuth::new(&opts, rpc_addr))
        .layer(metrics::Observe("rpc"))
        .merge(axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let backend = for_metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics::render(backend.garage_store()),
                    )
                }
            }),
        ));
    let grpc = grpc::service(backend, WriteAuth::new(&opts, grpc_addr));
    tracing::info!(gateway = %gw_addr, rpc = %rpc_addr, grpc = %grpc_addr, "serving");

    let gw = serve_http(listeners.gateway, gateway, &opts, stopped(stop_rx.clone()));
    let rpc = serve_http(listeners.rpc, rpc, &opts, stopped(stop_rx.clone()));
    let grpc = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(opts.max_concurrent_requests)
        .timeout(opts.request_timeout * 10)
        .http2_keepalive_interval(Some(opts.header_read_timeout))
        .http2_keepalive_timeout(Some(opts.header_read_timeout))
        .layer(metrics::Observe("grpc"))
        .add_service(grpc)
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(conn::admit(
                    listeners.grpc,
                    opts.max_connections,
                    conn::HTTP2_PREFACE,
                    opts.header_read_timeout,
                )),
                Ok::<_, std::io::Error>,
            ),
            stopped(stop_rx),
        );
    let ((), (), c) = tokio::join!(gw, rpc, grpc);
    c.map_err(std::io::Error::other)?;
    tracing::info!("all surfaces stopped");
    Ok(())
}

/// What the surfaces' unit tests serve.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::store::MemBlockStore;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Namespaces in memory, for tests of the surfaces.
    #[derive(Clone, Default)]
    pub(crate) struct MemBackend(Arc<Mutex<HashMap<String, Arc<MemBlockStore>>>>);

    impl Backend for MemBackend {
        type Ns = Arc<MemBlockStore>;
        fn namespace(&self, name: &str) -> Result<Self::Ns, store::Error> {
            store::check_namespace(name)?;
            Ok(self
                .0
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_default()
                .clone())
        }

        /// A memory namespace is registered once something used it.
        async fn is_registered(&self, name: &str) -> Result<bool, store::Error> {
            store::check_namespace(name)?;
            Ok(self.0.lock().unwrap().contains_key(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::MemBackend;
    use super::*;

    #[test]
    fn write_auth_rules() {
        let loopback: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let mut opts = ApiOptions::with_defaults(Some("s3cret"));
        let auth = WriteAuth::new(&opts, loopback);
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        assert!(auth.check(Some("Bearer nope")).is_err());
        assert!(auth.check(None).is_err());
        opts.write_token = None;
        opts.allow_anonymous_writes_on_loopback = true;
        assert!(WriteAuth::new(&opts, loopback).check(None).is_ok());
        assert!(WriteAuth::new(&opts, public).check(None).is_err());
        opts.allow_anonymous_writes_on_loopback = false;
        assert!(WriteAuth::new(&opts, loopback).check(None).is_err());
    }

    /// Sends raw bytes on a new connection; returns what came back before
    /// the server closed it or `wait` passed, and how long that took.
    async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let start = std::time::Instant::now();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    }

    fn status_of(answer: &str) -> u16 {
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// Slow, idle, oversize, flooding and malformed clients get bounded
    /// answers, and the server keeps serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_http_clients_are_bounded() {
        let mut opts = ApiOptions::with_defaults(Some("t0ken"));
        opts.header_read_timeout = Duration::from_millis(500);
        opts.request_timeout = Duration::from_secs(1);
        opts.max_body_bytes = 64 * 1024;
        opts.max_concurrent_requests = 2;
        let ([gw, rpc, _], stop, server) = test_server(opts).await;
        let put_head = |len: usize| {
            format!(
                "POST /api/v0/block/put HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\
                 Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len}\r\n\r\n"
            )
        };

        // Headers that never end, and a connection that never speaks:
        // both closed once the header deadline passes.
        let (_, took) = raw(
            rpc,
            b"POST /api/v0/block/put HTTP/1.1\r\nHost: x\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            took < Duration::from_secs(3),
            "slow headers held for {took:?}"
        );
        let (_, took) = raw(gw, b"", Duration::from_secs(5)).await;
        assert!(
            took < Duration::from_secs(3),
            "an idle connection held for {took:?}"
        );

        // A body that never arrives: 408 at the request deadline.
        let (answer, took) = raw(rpc, put_head(10_000).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 408, "{answer}");
        assert!(took < Duration::from_secs(3), "{took:?}");

        // A body over the limit: 413, nothing read beyond the headers.
        let (answer, _) = raw(rpc, put_head(10 << 20).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 413, "{answer}");

        // A flood: two requests hold both slots; the next gets 503 at once.
        let held: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(raw(
                    rpc,
                    put_head(10_000).leak().as_bytes(),
                    Duration::from_secs(5),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (answer, took) = raw(rpc, put_head(10_000).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 503, "{answer}");
        assert!(
            answer.contains("Retry-After") || answer.contains("retry-after"),
            "{answer}"
        );
        assert!(took < Duration::from_millis(900), "{took:?}");
        for h in held {
            assert_eq!(status_of(&h.await.unwrap().0), 408);
        }

        // Invalid UTF-8, encoded and raw, traversal, odd and huge paths:
        // each gets a 4xx answer (the README's promise), never a 5xx, a
        // success, or a connection closed without an answer.
        let long = format!(
            "GET /ipfs/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(16 * 1024)
        );
        let odd: [&[u8]; 9] = [
            b"GET /ipfs/%ff%fe%00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ipfs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ipfs/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET //ipfs//bafkqaaa//x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ipfs/bafkqaaa/%2e%2e/%2e%2e HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ipfs/bafkqaaa?format=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
            b"BREW /ipfs/bafkqaaa HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ipfs/bafkqaaa HTTP/1.1\r\nHost: x\r\nAccept: \xff\xfe\r\n\r\n",
            long.as_bytes(),
        ];
        for (addr, name) in [(gw, "gateway"), (rpc, "rpc")] {
            for req in odd {
                let (answer, _) = raw(addr, req, Duration::from_secs(3)).await;
                let code = status_of(&answer);
                assert!(
                    (400..500).contains(&code),
                    "{name}: {code} for {:?}: {:?}",
                    String::from_utf8_lossy(&req[..req.len().min(60)]),
                    &answer[..answer.len().min(300)]
                );
            }
        }

        // Still serving.
        let (answer, _) = raw(
            gw,
            b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// The surfaces on loopback with `opts` over memory: their addresses,
    /// a stop switch, the server.
    async fn test_server(
        opts: ApiOptions,
    ) -> (
        [SocketAddr; 3],
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listeners = Listeners::bind_loopback().await.unwrap();
        let addrs = listeners.addrs().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listeners, MemBackend::default(), opts, async {
            let _ = stopped.await;
        }));
        (addrs, stop, server)
    }

    /// [`test_server`] with at most 2 connections per listener and an
    /// 800 ms header deadline.
    async fn two_connection_server() -> (
        [SocketAddr; 3],
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let mut opts = ApiOptions::with_defaults(None);
        opts.header_read_timeout = Duration::from_millis(800);
        opts.max_connections = 2;
        test_server(opts).await
    }

    /// Beyond `max_connections`, a connection waits in the accept queue and
    /// is served once another closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_bound_wait_their_turn() {
        let ([gw, _, _], stop, server) = two_connection_server().await;
        let held = fill_both_slots(gw, b"GET /ipfs/").await;
        let request =
            b"GET /ipfs/bafkqaaa?format=raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (answer, took) = raw(gw, request, Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        waited_for_a_slot(took, held).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// Two clients that send `bytes` and stall, holding both slots of a
    /// [`two_connection_server`] listener until its deadline drops them.
    async fn fill_both_slots(
        addr: SocketAddr,
        bytes: &'static [u8],
    ) -> Vec<tokio::task::JoinHandle<(String, Duration)>> {
        let held = (0..2)
            .map(|_| tokio::spawn(raw(addr, bytes, Duration::from_secs(5))))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        held
    }

    /// Asserts that a request served after `took` waited for a slot, and
    /// waits for the stalled clients to be dropped.
    async fn waited_for_a_slot(
        took: Duration,
        held: Vec<tokio::task::JoinHandle<(String, Duration)>>,
    ) {
        assert!(
            took >= Duration::from_millis(500),
            "served at once ({took:?}) past the bound"
        );
        for h in held {
            h.await.unwrap();
        }
    }

    /// gRPC: a silent connection, one that sends part of the HTTP/2
    /// preface and stops, and one that stops after the preface are all
    /// closed within a few deadlines; while stalled ones hold the
    /// connection bound, a real client waits its turn and is then served.
    #[tokio::test]
    async fn grpc_connections_are_bounded() {
        let ([_, _, grpc], stop, server) = two_connection_server().await;
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for (what, bytes) in [
            ("silent", &b""[..]),
            ("part of the preface", &PREFACE[..5]),
            ("the preface only", PREFACE),
        ] {
            let (_, took) = raw(grpc, bytes, Duration::from_secs(10)).await;
            assert!(took < Duration::from_secs(4), "{what}: held {took:?}");
        }
        let held = fill_both_slots(grpc, &PREFACE[..5]).await;
        let start = std::time::Instant::now();
        let mut client =
            grpc::pb::blockstore_client::BlockstoreClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
        let has = client
            .has(grpc::pb::HasRequest {
                namespace: "bounded".into(),
                cid: "bafkqaaa".into(),
            })
            .await
            .unwrap();
        let took = start.elapsed();
        assert!(has.into_inner().has, "the identity CID is always held");
        waited_for_a_slot(took, held).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
