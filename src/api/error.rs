//! API errors and their mapping to HTTP statuses, kubo's error body and
//! gRPC status codes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dag::DagError;
use crate::store;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad CID, bad argument).
    #[error("{0}")]
    BadRequest(String),
    /// The block or DAG root is not stored.
    #[error("{0}")]
    NotFound(String),
    /// A write without the configured bearer token.
    #[error("this operation needs `Authorization: Bearer <write token>`")]
    Unauthorized,
    /// The requested response format is not served.
    #[error("{0}")]
    NotAcceptable(String),
    /// The body is over the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A DAG walk or CAR import failed (boxed: CIDs make it large).
    #[error(transparent)]
    Dag(Box<DagError>),
    /// Stored data a request needs cannot be decoded: the request is
    /// fine, the content is not (500).
    #[error("stored data cannot be used: {0}")]
    BadStoredData(String),
    /// `Cache-Control: only-if-cached`, and a block it needs is not held
    /// (412).
    #[error("{0}")]
    NotCached(String),
}

impl ApiError {
    /// A DAG error met while reading what the store holds: a block that
    /// cannot be decoded there is the content's fault, not the client's.
    /// With `only_if_cached`, a block of the path that is not held is a
    /// 412, as for the root.
    pub fn from_stored(e: DagError, only_if_cached: bool) -> Self {
        match e {
            DagError::Decode(e) => ApiError::BadStoredData(e.to_string()),
            DagError::Missing(c) if only_if_cached => {
                ApiError::NotCached(format!("block {c} is not in this store"))
            }
            other => other.into(),
        }
    }
}

impl From<DagError> for ApiError {
    fn from(e: DagError) -> Self {
        match e {
            DagError::Store(e) => ApiError::Store(e),
            other => ApiError::Dag(Box::new(other)),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadStoredData(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotCached(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Store(e) => store_status(e),
            ApiError::Dag(e) => match e.as_ref() {
                DagError::Store(e) => store_status(e),
                DagError::Missing(_) | DagError::NoSuchPath(_) => StatusCode::NOT_FOUND,
                DagError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                DagError::Car(_) | DagError::Incomplete { .. } | DagError::Decode(_) => {
                    StatusCode::BAD_REQUEST
                }
            },
        }
    }

    /// The gRPC status for this error. `UNAVAILABLE` carries a
    /// `retry-after` entry (seconds), as the HTTP answer does.
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self.status() {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                tonic::Status::invalid_argument(msg)
            }
            StatusCode::NOT_FOUND => tonic::Status::not_found(msg),
            StatusCode::NOT_IMPLEMENTED => tonic::Status::unimplemented(msg),
            StatusCode::PRECONDITION_FAILED => tonic::Status::failed_precondition(msg),
            StatusCode::UNAUTHORIZED => tonic::Status::unauthenticated(msg),
            StatusCode::SERVICE_UNAVAILABLE => {
                let mut status = tonic::Status::unavailable(msg);
                status.metadata_mut().insert(
                    "retry-after",
                    tonic::metadata::MetadataValue::from_static(RETRY_AFTER_SECONDS),
                );
                status
            }
            _ => tonic::Status::internal(msg),
        }
    }

    /// Kubo's error code: 0 normal, 1 client error, 3 not found, 5 forbidden.
    fn kubo_code(&self) -> u8 {
        match self.status() {
            StatusCode::NOT_FOUND => 3,
            StatusCode::UNAUTHORIZED => 5,
            s if s.is_client_error() => 1,
            _ => 0,
        }
    }

    /// The error as kubo's RPC answers it: `{"Message","Code","Type"}`.
    pub fn into_kubo_response(self) -> Response {
        let body = serde_json::json!({
            "Message": self.to_string(),
            "Code": self.kubo_code(),
            "Type": "error",
        });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        }
        with_retry_after(resp)
    }
}

/// Adds `Retry-After` to a 503 answer: the failure is transient.
fn with_retry_after(mut resp: Response) -> Response {
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    resp
}

/// What a client is told to wait after a transient failure: long enough
/// for a restarted node to be reconnected, short for a client's deadline.
const RETRY_AFTER_SECONDS: &str = "1";

fn store_status(e: &store::Error) -> StatusCode {
    match e {
        store::Error::Cid(crate::cid::CidError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        e if e.is_bad_input() => StatusCode::BAD_REQUEST,
        e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Gateway errors are plain text.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(cause = %self, "request failed");
        }
        let resp = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        with_retry_after(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::garage;

    fn cluster(e: garage::Error) -> ApiError {
        ApiError::Store(store::Error::Cluster(e))
    }

    /// Transient cluster failures are 503 / UNAVAILABLE with a retry
    /// hint; a corrupt block or an internal failure is a 500 without one.
    #[test]
    fn transient_failures_answer_503_with_retry_after() {
        for e in [
            garage::Error::Quorum("1 of 3".into()),
            garage::Error::Connection("closed".into()),
            garage::Error::Timeout(None, "reading"),
        ] {
            let e = cluster(e);
            let grpc = e.to_status();
            assert_eq!(grpc.code(), tonic::Code::Unavailable, "{e}");
            assert_eq!(grpc.metadata().get("retry-after").unwrap(), "1");
            let resp = e.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        }
        for e in [
            garage::Error::Corrupt("bad zstd".into()),
            garage::Error::Internal("the write batcher stopped".into()),
        ] {
            let e = cluster(e);
            assert_eq!(e.to_status().code(), tonic::Code::Internal, "{e}");
            let resp = e.into_kubo_response();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        }
    }
}
