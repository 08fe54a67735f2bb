//! The daemon's surfaces over a store: the trustless gateway, the kubo RPC
//! subset and the gRPC service, with their limits, write authorisation and
//! graceful shutdown.
//!
//! Servers take bound listeners and a shutdown future, so tests bind
//! `127.0.0.1:0` and run the daemon in-process. Everything is generic over
//! a [`Backend`]: the Garage store in production, memory in unit tests.

pub mod error;
pub mod gateway;
pub mod grpc;
pub mod kubo;
pub mod metrics;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::config::{ApiConfig, ConfigError, Secret};
use crate::store::{self, BlockStore, GarageStore, MemBlockStore, Namespace};

/// Where the API finds namespaces.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A namespace's store.
    type Ns: BlockStore + Clone;
    /// The store of a namespace (the name is checked).
    fn namespace(&self, name: &str) -> Result<Self::Ns, store::Error>;

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

    fn garage_store(&self) -> Option<&GarageStore> {
        Some(self)
    }
}

/// Namespaces in memory, for tests of the surfaces.
#[derive(Clone, Default)]
pub struct MemBackend(Arc<Mutex<HashMap<String, Arc<MemBlockStore>>>>);

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
    /// Public key reported as the node's peer id by `/api/v0/id`.
    pub peer_key: [u8; 32],
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
            peer_key,
        })
    }

    /// Defaults for tests: namespace `default`, the given token.
    pub fn for_tests(write_token: Option<&str>) -> Self {
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

    let gw =
        axum::serve(listeners.gateway, gateway).with_graceful_shutdown(stopped(stop_rx.clone()));
    let rpc = axum::serve(listeners.rpc, rpc).with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(opts.max_concurrent_requests)
        .timeout(opts.request_timeout * 10)
        .layer(metrics::Observe("grpc"))
        .add_service(grpc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
            stopped(stop_rx),
        );
    let (a, b, c) = tokio::join!(gw.into_future(), rpc.into_future(), grpc);
    a?;
    b?;
    c.map_err(std::io::Error::other)?;
    tracing::info!("all surfaces stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_auth_rules() {
        let loopback: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let mut opts = ApiOptions::for_tests(Some("s3cret"));
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
}
