//! `/metrics`: the daemon's Prometheus metrics.
//!
//! - `garage_ipfs_requests_total{surface,op,status}` and
//!   `garage_ipfs_request_duration_seconds{surface,op}` (a histogram), for
//!   every request of the gateway, the kubo RPC and gRPC, recorded by the
//!   [`Observe`] layer;
//! - `garage_ipfs_cluster_calls_total{op,call}`: requests the connector
//!   made to the cluster, per store operation and kind (divide by the
//!   request rate for calls per operation);
//! - `garage_ipfs_filter_*{namespace}`: presence filter hits (absent
//!   blocks answered from memory), false positives, entries, memory,
//!   rebuilds, readiness;
//! - `garage_ipfs_cache_*`: block cache hits, misses, bytes;
//! - `garage_ipfs_put_bytes_in_flight`: block bytes held by puts;
//! - `garage_ipfs_cluster_storage_nodes{,_up}`: the layout's storage
//!   nodes, and those the connector is connected to now.
//!
//! Store figures are read at scrape time; request figures are recorded as
//! they happen, in the process-wide `metrics` recorder installed here.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Method, Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::garage::{Call, Op};
use crate::store::GarageStore;

/// Latency buckets, seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus recorder (installed on first use).
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed; /metrics shows store figures only"
            );
        }
        handle
    })
}

/// Renders the exposition text, with the store's figures as of now.
pub(crate) fn render(store: Option<&GarageStore>) -> String {
    let handle = handle();
    if let Some(store) = store {
        export_store(store);
    }
    handle.render()
}

fn export_store(store: &GarageStore) {
    let health = store.connector().system.health();
    metrics::gauge!("garage_ipfs_cluster_storage_nodes").set(health.storage_nodes as f64);
    metrics::gauge!("garage_ipfs_cluster_storage_nodes_up").set(health.storage_nodes_ok as f64);
    let calls = store.connector().call_counters();
    for op in Op::ALL {
        for call in Call::ALL {
            metrics::counter!("garage_ipfs_cluster_calls_total", "op" => op.name(), "call" => call.name())
                .absolute(calls.get(op, call));
        }
    }
    for (ns, s) in store.filter_stats_all() {
        let l = [("namespace", ns)];
        metrics::counter!("garage_ipfs_filter_hits_total", &l).absolute(s.hits);
        metrics::counter!("garage_ipfs_filter_false_positives_total", &l)
            .absolute(s.false_positives);
        metrics::counter!("garage_ipfs_filter_rebuilds_total", &l).absolute(s.rebuilds);
        metrics::gauge!("garage_ipfs_filter_entries", &l).set(s.entries as f64);
        metrics::gauge!("garage_ipfs_filter_memory_bytes", &l).set(s.memory_bytes as f64);
        metrics::gauge!("garage_ipfs_filter_ready", &l).set(if s.ready { 1.0 } else { 0.0 });
    }
    let c = store.cache_stats();
    metrics::counter!("garage_ipfs_cache_hits_total").absolute(c.hits);
    metrics::counter!("garage_ipfs_cache_misses_total").absolute(c.misses);
    metrics::gauge!("garage_ipfs_cache_bytes").set(c.bytes as f64);
    metrics::gauge!("garage_ipfs_put_bytes_in_flight").set(store.bytes_in_flight() as f64);
}

/// The operation label of a request: from a fixed set, so that clients
/// cannot create label values.
fn op_of(surface: &str, method: &Method, path: &str) -> &'static str {
    match surface {
        "gateway" if path.starts_with("/routing/") => "routing",
        "gateway" => match *method {
            Method::GET => "get",
            Method::HEAD => "head",
            _ => "other",
        },
        "rpc" => {
            const KNOWN: &[&str] = &[
                "block/put",
                "block/get",
                "block/stat",
                "block/rm",
                "dag/import",
                "dag/export",
                "version",
                "id",
            ];
            let op = path.strip_prefix("/api/v0/").unwrap_or("");
            KNOWN.iter().find(|k| **k == op).copied().unwrap_or("other")
        }
        _ => {
            const KNOWN: &[&str] = &[
                "Put", "PutMany", "Get", "GetMany", "Has", "GetSize", "Delete", "List",
            ];
            let op = path.rsplit('/').next().unwrap_or("");
            KNOWN.iter().find(|k| **k == op).copied().unwrap_or("other")
        }
    }
}

/// A tower layer that records every request of one surface.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observe(pub &'static str);

impl<S> tower::Layer<S> for Observe {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        handle();
        Observed {
            inner,
            surface: self.0,
        }
    }
}

/// The service of [`Observe`].
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    surface: &'static str,
}

impl<S, B, R> tower::Service<Request<B>> for Observed<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let surface = self.surface;
        let op = op_of(surface, req.method(), req.uri().path());
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let status = match &res {
                Ok(r) if r.status().is_success() => "ok",
                Ok(r) if r.status().is_client_error() => "client_error",
                Ok(_) => "server_error",
                Err(_) => "failed",
            };
            metrics::counter!("garage_ipfs_requests_total", "surface" => surface, "op" => op, "status" => status)
                .increment(1);
            metrics::histogram!("garage_ipfs_request_duration_seconds", "surface" => surface, "op" => op)
                .record(start.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_labels_come_from_a_fixed_set() {
        assert_eq!(op_of("gateway", &Method::GET, "/ipfs/bafy"), "get");
        assert_eq!(op_of("gateway", &Method::POST, "/ipfs/bafy"), "other");
        assert_eq!(
            op_of("gateway", &Method::GET, "/routing/v1/providers/bafy"),
            "routing"
        );
        assert_eq!(
            op_of("rpc", &Method::POST, "/api/v0/block/put"),
            "block/put"
        );
        assert_eq!(
            op_of("rpc", &Method::POST, "/api/v0/anything-goes"),
            "other"
        );
        assert_eq!(
            op_of("grpc", &Method::POST, "/garage_ipfs.v1.Blockstore/GetSize"),
            "GetSize"
        );
        assert_eq!(op_of("grpc", &Method::POST, "/x/Evil"), "other");
    }
}
