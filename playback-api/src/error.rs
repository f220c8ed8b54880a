//! One error type for every route, rendered as `{"code": "...", "message": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use wire::inbox::{RejectCode, Rejected};
use wire::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The write path refused a comment.
    #[error("{}", .0.message)]
    Rejected(Rejected),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unavailable(String),
}

impl From<wire::moderation::ActionError> for ApiError {
    fn from(e: wire::moderation::ActionError) -> Self {
        use wire::moderation::ActionError as E;
        match e {
            E::NotFound(m) => ApiError::NotFound(m),
            E::Invalid(m) => ApiError::bad_request(m),
            E::Conflict(m) => ApiError::Conflict {
                code: "conflict",
                message: m,
            },
            E::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "invalid",
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn reject_status(code: RejectCode) -> StatusCode {
    match code {
        RejectCode::Empty | RejectCode::TooLong | RejectCode::Invalid | RejectCode::Blocked => {
            StatusCode::BAD_REQUEST
        }
        RejectCode::StreamNotLive => StatusCode::NOT_FOUND,
        RejectCode::RateLimited | RejectCode::SlowMode => StatusCode::TOO_MANY_REQUESTS,
        RejectCode::Banned | RejectCode::SubscribersOnly | RejectCode::EmoteOnly => {
            StatusCode::FORBIDDEN
        }
        RejectCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, retry_after_ms) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, *code, None),
            ApiError::Rejected(r) => (reject_status(r.code), r.code.as_str(), r.retry_after_ms),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "storage failed during a request");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1000))
            }
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1000))
            }
        };
        let mut resp = (
            status,
            Json(Body {
                code,
                message,
                retry_after_ms,
            }),
        )
            .into_response();
        if let Some(ms) = retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
