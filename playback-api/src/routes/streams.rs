//! Stream lifecycle: create, read, start, end.
//!
//! Every change is stored, remembered by this process's stream directory (so posting right
//! after `start` works) and published as the retained `streams/{stream}/state` message.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use wire::auth::Role;
use wire::bus::Delivery;
use wire::event::{StreamState, StreamStatus};
use wire::time::now_ms;
use wire::StreamId;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/streams", post(create))
        .route("/v1/streams/{stream}", get(read))
        .route("/v1/streams/{stream}/start", post(start))
        .route("/v1/streams/{stream}/end", post(end))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStream {
    id: String,
    #[serde(default)]
    title: Option<String>,
}

const MAX_TITLE_CHARS: usize = 200;

pub(crate) fn parse_stream_id(s: &str) -> Result<StreamId, ApiError> {
    StreamId::new(s).map_err(|e| ApiError::bad_request(format!("stream id {s:?}: {e}")))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<StreamState>), ApiError> {
    caller.require(&[Role::Broadcaster, Role::Admin], "creating a stream")?;
    // Any content type: curl users forget the header and the body says what it is.
    let body: CreateStream = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"id\", \"title\"}}: {e}")))?;
    let id = parse_stream_id(&body.id)?;
    let title = body.title.unwrap_or_else(|| id.to_string());
    if title.chars().count() > MAX_TITLE_CHARS || title.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "title must be at most {MAX_TITLE_CHARS} characters without control characters"
        )));
    }
    let stream = StreamState {
        id,
        title,
        owner: Some(caller.0.user.clone()),
        status: StreamStatus::Created,
        created_at: now_ms(),
        started_at: None,
        ended_at: None,
    };
    if !state.streams.store().create_stream(&stream).await? {
        return Err(ApiError::Conflict {
            code: "exists",
            message: format!("stream {} already exists", stream.id),
        });
    }
    publish(&state, &stream).await;
    Ok((StatusCode::CREATED, Json(stream)))
}

async fn read(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    Ok(Json(load(&state, &id).await?))
}

async fn load(state: &AppState, id: &StreamId) -> Result<StreamState, ApiError> {
    state
        .streams
        .get(id, Duration::ZERO)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} does not exist")))
}

/// Broadcasters may run their own streams; admins any.
fn may_manage(caller: &Caller, stream: &StreamState) -> Result<(), ApiError> {
    caller.require(&[Role::Broadcaster, Role::Admin], "running a stream")?;
    if caller.0.role == Role::Broadcaster && stream.owner.as_ref() != Some(&caller.0.user) {
        return Err(ApiError::Forbidden(format!(
            "stream {} belongs to another broadcaster",
            stream.id
        )));
    }
    Ok(())
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
) -> Result<Json<StreamState>, ApiError> {
    transition(state, caller, stream, StreamStatus::Live).await
}

async fn end(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
) -> Result<Json<StreamState>, ApiError> {
    transition(state, caller, stream, StreamStatus::Ended).await
}

/// Moves a stream forward in its lifecycle. The write is a compare-and-set on the status read,
/// so concurrent calls cannot move it backwards or set `started_at` twice; a lost race is
/// retried on the fresh record.
async fn transition(
    state: AppState,
    caller: Caller,
    stream: String,
    to: StreamStatus,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    for _ in 0..3 {
        let current = load(&state, &id).await?;
        may_manage(&caller, &current)?;
        if current.status == to {
            return Ok(Json(current)); // idempotent
        }
        if current.status > to {
            return Err(ApiError::Conflict {
                code: "stream_ended",
                message: format!("stream {id} has ended and cannot start again"),
            });
        }
        let mut next = current.clone();
        next.status = to;
        let now = now_ms();
        match to {
            StreamStatus::Live => next.started_at = Some(now),
            StreamStatus::Ended => next.ended_at = Some(now),
            StreamStatus::Created => {}
        }
        if state
            .streams
            .store()
            .update_stream(&next, current.status)
            .await?
        {
            publish(&state, &next).await;
            return Ok(Json(next));
        }
    }
    Err(ApiError::Unavailable(format!(
        "stream {id} is being changed concurrently; retry"
    )))
}

async fn publish(state: &AppState, s: &StreamState) {
    state.streams.remember(s.clone());
    if let Err(e) = state.bus.deliver(Delivery::stream_state(s)).await {
        tracing::warn!(error = %e, stream = %s.id, "publishing stream state failed");
    }
}
