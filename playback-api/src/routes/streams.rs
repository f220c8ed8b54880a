//! Stream lifecycle: create, read, start, end.
//!
//! Every change is stored, remembered by this process's stream directory (so posting right
//! after `start` works) and published as the retained `streams/{stream}/state` message.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use wire::auth::Role;
use wire::bus::Delivery;
use wire::event::{ChatSettings, StreamState, StreamStatus};
use wire::moderation::AuditEntry;
use wire::store::Visibility;
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
        .route("/v1/streams/{stream}/settings", put(settings))
        .route("/v1/streams/{stream}/pin", post(pin).delete(unpin))
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
    let stream = StreamState::new(id, title, Some(caller.0.user.clone()), now_ms());
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

/// Moves a stream forward in its lifecycle (a compare-and-set on the record's version, so
/// concurrent calls cannot move it backwards or set `started_at` twice).
async fn transition(
    state: AppState,
    caller: Caller,
    stream: String,
    to: StreamStatus,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    let updated = state
        .streams
        .update(&id, |s| {
            may_manage(&caller, s)?;
            if s.status == to {
                return Ok(false); // idempotent
            }
            if s.status > to {
                return Err(ApiError::Conflict {
                    code: "stream_ended",
                    message: format!("stream {id} has ended and cannot start again"),
                });
            }
            s.status = to;
            let now = now_ms();
            match to {
                StreamStatus::Live => s.started_at = Some(now),
                StreamStatus::Ended => s.ended_at = Some(now),
                StreamStatus::Created => {}
            }
            Ok(true)
        })
        .await?;
    let Some((s, changed)) = updated else {
        return Err(ApiError::NotFound(format!("stream {id} does not exist")));
    };
    if changed {
        publish(&state, &s).await;
    }
    Ok(Json(s))
}

async fn publish(state: &AppState, s: &StreamState) {
    state.streams.remember(s.clone());
    if let Err(e) = state.bus.deliver(Delivery::stream_state(s)).await {
        tracing::warn!(error = %e, stream = %s.id, "publishing stream state failed");
    }
}

/// Broadcasters of the stream, moderators and admins change its chat.
fn may_moderate(caller: &Caller, stream: &StreamState) -> Result<(), ApiError> {
    match caller.0.role {
        Role::Moderator | Role::Admin => Ok(()),
        Role::Broadcaster if stream.owner.as_ref() == Some(&caller.0.user) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "needs role moderator, admin or the stream's broadcaster".into(),
        )),
    }
}

/// Longest slow mode, seconds.
const MAX_SLOW_MODE_S: u64 = 3600;

async fn settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    let settings: ChatSettings = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be {{\"slow_mode_s\", \"mode\": \"open|subscribers|emote_only\", \"max_length\"}}: {e}"
        ))
    })?;
    if settings.slow_mode_s > MAX_SLOW_MODE_S {
        return Err(ApiError::bad_request(format!(
            "slow_mode_s is at most {MAX_SLOW_MODE_S}"
        )));
    }
    if settings.max_length == 0 || settings.max_length > state.max_comment_chars {
        return Err(ApiError::bad_request(format!(
            "max_length must be between 1 and {}",
            state.max_comment_chars
        )));
    }
    let updated = state
        .streams
        .update(&id, |s| {
            may_moderate(&caller, s)?;
            let changed = s.settings != settings;
            s.settings = settings;
            Ok::<_, ApiError>(changed)
        })
        .await?;
    let Some((s, changed)) = updated else {
        return Err(ApiError::NotFound(format!("stream {id} does not exist")));
    };
    if changed {
        publish(&state, &s).await;
        audit(
            &state,
            &caller,
            "settings",
            &s.id,
            None,
            &serde_json::to_string(&settings).unwrap_or_default(),
        )
        .await;
    }
    Ok(Json(s))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    comment_id: String,
}

async fn pin(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    let PinBody { comment_id } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"comment_id\"}}: {e}")))?;
    let stored = state
        .streams
        .store()
        .find_comment(&id, &comment_id)
        .await?
        .filter(|c| c.visibility == Visibility::Visible)
        .ok_or_else(|| ApiError::NotFound(format!("no visible comment {comment_id} in {id}")))?;
    let updated = state
        .streams
        .update(&id, |s| {
            may_moderate(&caller, s)?;
            let changed = s.pinned.as_ref().map(|c| &c.id) != Some(&comment_id);
            s.pinned = Some(stored.comment.clone());
            Ok::<_, ApiError>(changed)
        })
        .await?;
    let Some((s, changed)) = updated else {
        return Err(ApiError::NotFound(format!("stream {id} does not exist")));
    };
    // A retraction that committed between the check above and the pin found nothing pinned
    // to take down; look again now that the pin is stored, and take it down here.
    let still_visible = state
        .streams
        .store()
        .find_comment(&id, &comment_id)
        .await?
        .is_some_and(|c| c.visibility == Visibility::Visible);
    if !still_visible {
        let undone = state
            .streams
            .update(&id, |s| {
                let ours = s.pinned.as_ref().is_some_and(|c| c.id == comment_id);
                if ours {
                    s.pinned = None;
                }
                Ok::<_, ApiError>(ours)
            })
            .await?;
        if let Some((s, true)) = undone {
            publish_pin(&state, &s).await;
        }
        return Err(ApiError::Conflict {
            code: "removed",
            message: format!("comment {comment_id} was removed while it was being pinned"),
        });
    }
    if changed {
        publish_pin(&state, &s).await;
        audit(&state, &caller, "pin", &s.id, Some(comment_id), "").await;
    }
    Ok(Json(s))
}

async fn unpin(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
) -> Result<Json<StreamState>, ApiError> {
    let id = parse_stream_id(&stream)?;
    let mut was = None;
    let updated = state
        .streams
        .update(&id, |s| {
            may_moderate(&caller, s)?;
            was = s.pinned.take().map(|c| c.id);
            Ok::<_, ApiError>(was.is_some())
        })
        .await?;
    let Some((s, changed)) = updated else {
        return Err(ApiError::NotFound(format!("stream {id} does not exist")));
    };
    if changed {
        publish_pin(&state, &s).await;
        audit(&state, &caller, "unpin", &s.id, was, "").await;
    }
    Ok(Json(s))
}

/// Publishes the retained pin and stream state after a change of the pin.
async fn publish_pin(state: &AppState, s: &StreamState) {
    publish(state, s).await;
    if let Err(e) = state.bus.deliver(Delivery::pinned(s)).await {
        tracing::warn!(error = %e, stream = %s.id, "publishing the pin failed");
    }
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    stream: &StreamId,
    comment_id: Option<String>,
    reason: &str,
) {
    let entry = AuditEntry {
        at: now_ms(),
        actor: caller.0.user.to_string(),
        action: action.into(),
        stream: Some(stream.clone()),
        comment_id,
        user: None,
        reason: reason.into(),
    };
    if let Err(e) = state.streams.store().append_audit(&entry).await {
        tracing::warn!(error = %e, "writing the audit trail failed");
    }
}
