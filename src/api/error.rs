//! API errors and their mapping to HTTP statuses, kubo's error body and
//! gRPC status codes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dag::DagError;
use crate::garage;
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
            ApiError::Store(e) => store_status(e),
            ApiError::Dag(e) => match e.as_ref() {
                DagError::Store(e) => store_status(e),
                DagError::Missing(_) => StatusCode::NOT_FOUND,
                DagError::Car(_) | DagError::Incomplete { .. } | DagError::Decode { .. } => {
                    StatusCode::BAD_REQUEST
                }
            },
        }
    }

    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self.status() {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                tonic::Status::invalid_argument(msg)
            }
            StatusCode::NOT_FOUND => tonic::Status::not_found(msg),
            StatusCode::UNAUTHORIZED => tonic::Status::unauthenticated(msg),
            StatusCode::SERVICE_UNAVAILABLE => tonic::Status::unavailable(msg),
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
        resp
    }
}

fn store_status(e: &store::Error) -> StatusCode {
    use garage::Error as G;
    match e {
        store::Error::Cid(crate::cid::CidError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        e if e.is_bad_input() => StatusCode::BAD_REQUEST,
        store::Error::Cluster(G::Quorum(_) | G::Timeout(..) | G::Unreachable(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        store::Error::Partial { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}
