//! Moderator and broadcaster tools: retract, restore, report, review queue, bans, audit log.
//!
//! Moderators and admins act everywhere; a broadcaster acts on the streams they own (and may
//! ban only from those); viewers may only report.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wire::auth::Role;
use wire::event::{Event, StreamState};
use wire::moderation::{
    Action, ActionOutcome, AuditEntry, Ban, BanScope, Decision, QueueItem, QueueStatus,
};
use wire::time::now_ms;
use wire::{StreamId, UserId};

use super::streams::parse_stream_id;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{stream}/comments/{id}/retract", post(retract))
        .route("/v1/streams/{stream}/comments/{id}/restore", post(restore))
        .route("/v1/streams/{stream}/comments/{id}/report", post(report))
        .route("/v1/moderation/queue", get(queue))
        .route("/v1/moderation/queue/{item}/decision", post(decide))
        .route("/v1/users/{user}/ban", post(ban).delete(unban))
        .route("/v1/moderation/log", get(log))
}

/// Longest reason accepted.
const MAX_REASON_CHARS: usize = 500;

fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON_CHARS} characters, no control characters"
        )));
    }
    Ok(())
}

async fn stream(state: &AppState, id: &StreamId) -> Result<StreamState, ApiError> {
    state
        .streams
        .get(id, Duration::from_secs(60))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} does not exist")))
}

/// Moderators and admins everywhere; broadcasters on their own streams.
fn may_moderate(caller: &Caller, stream: Option<&StreamState>) -> Result<(), ApiError> {
    match caller.0.role {
        Role::Moderator | Role::Admin => Ok(()),
        Role::Broadcaster if stream.is_some_and(|s| s.owner.as_ref() == Some(&caller.0.user)) => {
            Ok(())
        }
        Role::Broadcaster => Err(ApiError::Forbidden(
            "broadcasters moderate only their own streams".into(),
        )),
        Role::Viewer => Err(ApiError::Forbidden(
            "moderation needs role moderator, admin or the stream's broadcaster".into(),
        )),
    }
}

fn actor(caller: &Caller) -> String {
    caller.0.user.to_string()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct ActionResponse {
    changed: bool,
    event: Option<Event>,
    item: Option<QueueItem>,
}

impl From<ActionOutcome> for ActionResponse {
    fn from(o: ActionOutcome) -> Self {
        ActionResponse {
            changed: o.changed,
            event: o.event,
            item: o.item,
        }
    }
}

async fn retract(
    State(state): State<AppState>,
    caller: Caller,
    Path((stream_id, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<ActionResponse>, ApiError> {
    let sid = parse_stream_id(&stream_id)?;
    may_moderate(&caller, Some(&stream(&state, &sid).await?))?;
    let b: ReasonBody = body(&raw)?;
    check_reason(&b.reason)?;
    let reason = if b.reason.is_empty() {
        "removed by a moderator".to_string()
    } else {
        b.reason
    };
    let out = state
        .ingest
        .act(Action::Retract {
            stream: sid,
            comment_id: id,
            reason,
            actor: actor(&caller),
            strike: true,
        })
        .await?;
    Ok(Json(out.into()))
}

async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path((stream_id, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<ActionResponse>, ApiError> {
    let sid = parse_stream_id(&stream_id)?;
    may_moderate(&caller, Some(&stream(&state, &sid).await?))?;
    let b: ReasonBody = body(&raw)?;
    check_reason(&b.reason)?;
    let out = state
        .ingest
        .act(Action::Restore {
            stream: sid,
            comment_id: id,
            reason: b.reason,
            actor: actor(&caller),
        })
        .await?;
    Ok(Json(out.into()))
}

async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path((stream_id, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<(StatusCode, Json<ActionResponse>), ApiError> {
    let sid = parse_stream_id(&stream_id)?;
    let b: ReasonBody = body(&raw)?;
    check_reason(&b.reason)?;
    let mut out = state
        .ingest
        .act(Action::Report {
            stream: sid.clone(),
            comment_id: id,
            reporter: caller.0.user.clone(),
            reason: b.reason,
        })
        .await?;
    // Reporters learn that their report counted; only the stream's moderators see who
    // else reported.
    let s = stream(&state, &sid).await?;
    if may_moderate(&caller, Some(&s)).is_err() {
        out.item = None;
    }
    Ok((StatusCode::ACCEPTED, Json(out.into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    stream: Option<String>,
    /// `open` (default), `approved`, `retracted` or `all`.
    status: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct QueuePage {
    items: Vec<QueueItem>,
}

async fn queue(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<QueuePage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let sid = q.stream.as_deref().map(parse_stream_id).transpose()?;
    let s = match &sid {
        Some(id) => Some(stream(&state, id).await?),
        None => None,
    };
    may_moderate(&caller, s.as_ref())?;
    let status = match q.status.as_deref().unwrap_or("open") {
        "open" => Some(QueueStatus::Open),
        "approved" => Some(QueueStatus::Approved),
        "retracted" => Some(QueueStatus::Retracted),
        "all" => None,
        other => {
            return Err(ApiError::bad_request(format!(
                "status {other:?}: open, approved, retracted or all"
            )))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, state.max_page);
    let items = state
        .streams
        .store()
        .list_queue(sid.as_ref(), status, limit)
        .await?;
    Ok(Json(QueuePage { items }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: Option<Decision>,
    #[serde(default)]
    reason: String,
}

async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path(item_id): Path<String>,
    raw: Bytes,
) -> Result<Json<ActionResponse>, ApiError> {
    let b: DecisionBody = body(&raw)?;
    let Some(decision) = b.decision else {
        return Err(ApiError::bad_request(
            "body must be {\"decision\": \"approve\" | \"retract\", \"reason\": \"...\"}",
        ));
    };
    check_reason(&b.reason)?;
    let item = state
        .streams
        .store()
        .get_queue_item(&item_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no queue item {item_id}")))?;
    may_moderate(&caller, Some(&stream(&state, &item.stream).await?))?;
    let out = state
        .ingest
        .act(Action::Decide {
            item_id,
            decision,
            actor: actor(&caller),
            reason: b.reason,
        })
        .await?;
    Ok(Json(out.into()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BanBody {
    /// `"global"` or a stream id.
    scope: Option<String>,
    duration_s: Option<u64>,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    reason: String,
}

fn parse_scope(s: &str) -> Result<BanScope, ApiError> {
    BanScope::try_from(s.to_string())
        .map_err(|_| ApiError::bad_request(format!("scope {s:?}: \"global\" or a stream id")))
}

fn parse_user(s: &str) -> Result<UserId, ApiError> {
    UserId::new(s).map_err(|e| ApiError::bad_request(format!("user id {s:?}: {e}")))
}

/// Who may ban in a scope: moderators and admins anywhere, broadcasters from their streams.
async fn may_ban(state: &AppState, caller: &Caller, scope: &BanScope) -> Result<(), ApiError> {
    match scope {
        BanScope::Global => caller.require(&[Role::Moderator, Role::Admin], "a global ban"),
        BanScope::Stream(id) => may_moderate(caller, Some(&stream(state, id).await?)),
    }
}

async fn ban(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    raw: Bytes,
) -> Result<(StatusCode, Json<Ban>), ApiError> {
    let user = parse_user(&user)?;
    let b: BanBody = body(&raw)?;
    let scope = parse_scope(b.scope.as_deref().unwrap_or("global"))?;
    may_ban(&state, &caller, &scope).await?;
    check_reason(&b.reason)?;
    let now = now_ms();
    let until = match (b.duration_s, b.permanent) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "give duration_s or permanent, not both",
            ))
        }
        (Some(0), _) => return Err(ApiError::bad_request("duration_s must be at least 1")),
        (Some(d), false) => Some(now.saturating_add((d as i64).saturating_mul(1000))),
        (None, true) => None,
        (None, false) => {
            return Err(ApiError::bad_request(
                "give duration_s (seconds) or \"permanent\": true",
            ))
        }
    };
    let ban = Ban {
        user: user.clone(),
        scope,
        shadow: b.shadow,
        until,
        reason: b.reason,
        actor: actor(&caller),
        at: now,
    };
    let store = state.streams.store();
    store.put_ban(&ban).await?;
    store
        .append_audit(&AuditEntry {
            at: now,
            actor: ban.actor.clone(),
            action: if ban.shadow { "shadow_ban" } else { "ban" }.into(),
            stream: match &ban.scope {
                BanScope::Stream(s) => Some(s.clone()),
                BanScope::Global => None,
            },
            comment_id: None,
            user: Some(user),
            reason: ban.reason.clone(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(ban)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnbanQuery {
    scope: Option<String>,
}

async fn unban(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    query: Result<Query<UnbanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = parse_user(&user)?;
    let scope = parse_scope(q.scope.as_deref().unwrap_or("global"))?;
    may_ban(&state, &caller, &scope).await?;
    let store = state.streams.store();
    if !store.delete_ban(&user, &scope).await? {
        return Err(ApiError::NotFound(format!(
            "{user} is not banned in {scope}"
        )));
    }
    store
        .append_audit(&AuditEntry {
            at: now_ms(),
            actor: actor(&caller),
            action: "unban".into(),
            stream: match &scope {
                BanScope::Stream(s) => Some(s.clone()),
                BanScope::Global => None,
            },
            comment_id: None,
            user: Some(user),
            reason: String::new(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    stream: Option<String>,
    /// Entries older than this (ms since epoch), for paging back.
    before: Option<i64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct LogPage {
    entries: Vec<AuditEntry>,
}

async fn log(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let sid = q.stream.as_deref().map(parse_stream_id).transpose()?;
    let s = match &sid {
        Some(id) => Some(stream(&state, id).await?),
        None => None,
    };
    may_moderate(&caller, s.as_ref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, state.max_page);
    let entries = state
        .streams
        .store()
        .list_audit(sid.as_ref(), q.before, limit)
        .await?;
    Ok(Json(LogPage { entries }))
}
