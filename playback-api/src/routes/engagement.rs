//! Engagement reads: stream stats (viewers, reactions), reply threads, top comments.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wire::event::{Comment, Event, StreamState};
use wire::time::now_ms;
use wire::StreamId;

use super::streams::parse_stream_id;
use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{stream}/stats", get(stats))
        .route("/v1/streams/{stream}/comments/top", get(top))
        .route("/v1/streams/{stream}/comments/{id}/replies", get(replies))
}

/// Comments looked at to rank a top list (the newest ones of the window win beyond it).
pub(crate) const MAX_RANKED: usize = 10_000;

pub(crate) async fn stream(state: &AppState, id: &StreamId) -> Result<StreamState, ApiError> {
    state
        .streams
        .get(id, Duration::from_secs(60))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} does not exist")))
}

#[derive(Serialize)]
struct Stats {
    stream: String,
    /// Clients watching now (on this node).
    viewers: u64,
    /// Distinct users since the stream started (estimate).
    unique: u64,
    /// Reaction totals since the stream started.
    reactions: std::collections::BTreeMap<String, u64>,
}

async fn stats(
    State(state): State<AppState>,
    Path(stream_id): Path<String>,
) -> Result<Json<Stats>, ApiError> {
    let id = parse_stream_id(&stream_id)?;
    stream(&state, &id).await?;
    let p = state
        .presence
        .current(&id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let reactions =
        wire::reactions::totals(state.reactions.as_deref(), &**state.streams.store(), &id).await?;
    Ok(Json(Stats {
        stream: id.to_string(),
        viewers: p.viewers,
        unique: p.unique,
        reactions,
    }))
}

/// `score = (likes + 2·replies) / (age_hours + 2)^1.5` — engagement, decaying with age (the
/// "gravity" ranking of link aggregators: a reply counts twice a like; the +2 keeps brand
/// new comments from dividing by almost nothing).
pub(crate) fn score(c: &Comment, now_ms: i64) -> f64 {
    let age_hours = (now_ms - c.ts).max(0) as f64 / 3_600_000.0;
    (c.likes as f64 + 2.0 * c.replies as f64) / (age_hours + 2.0).powf(1.5)
}

/// Sorts by score, highest first; ties by newer first.
pub(crate) fn rank(comments: &mut [Comment], now_ms: i64) {
    comments.sort_by(|a, b| {
        score(b, now_ms)
            .total_cmp(&score(a, now_ms))
            .then(b.seq.cmp(&a.seq))
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    /// Seconds back from now (or from the end of an ended stream); default 600.
    window: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct TopPage {
    stream: String,
    comments: Vec<Event>,
}

async fn top(
    State(state): State<AppState>,
    Path(stream_id): Path<String>,
    query: Result<Query<TopQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TopPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = parse_stream_id(&stream_id)?;
    let s = stream(&state, &id).await?;
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > state.max_page {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page
        )));
    }
    let window_ms = q.window.unwrap_or(600).saturating_mul(1000);
    let now = now_ms();
    let end = s.ended_at.unwrap_or(now);
    let started = s.started_at.unwrap_or(end);
    let to = u64::try_from(end - started).unwrap_or(0) + 1;
    let from = to.saturating_sub(window_ms + 1);
    let store = state.streams.store();
    let mut comments = store.latest(&id, from, to, MAX_RANKED).await?;
    // An ended stream ranks as of its end, so its ranking does not drift afterwards.
    rank(&mut comments, end);
    comments.truncate(limit);
    Ok(Json(TopPage {
        stream: id.to_string(),
        comments: comments.into_iter().map(Event::Comment).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepliesQuery {
    limit: Option<usize>,
    /// The `next_token` of the previous page.
    pagination_token: Option<String>,
}

#[derive(Serialize)]
struct RepliesPage {
    stream: String,
    parent_id: String,
    comments: Vec<Event>,
    next_token: Option<String>,
}

async fn replies(
    State(state): State<AppState>,
    Path((stream_id, parent)): Path<(String, String)>,
    query: Result<Query<RepliesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RepliesPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = parse_stream_id(&stream_id)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page
        )));
    }
    let after: u64 = match &q.pagination_token {
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request("pagination_token is not valid"))?,
        None => 0,
    };
    let store = state.streams.store();
    if store.find_comment(&id, &parent).await?.is_none() {
        return Err(ApiError::NotFound(format!("no comment {parent} in {id}")));
    }
    let page = store.replies(&id, &parent, after, limit).await?;
    let next_token = (page.len() == limit).then(|| page[page.len() - 1].seq.to_string());
    Ok(Json(RepliesPage {
        stream: id.to_string(),
        parent_id: parent,
        comments: page.into_iter().map(Event::Comment).collect(),
        next_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::event::UserRef;
    use wire::UserId;

    fn c(seq: u64, likes: u64, replies: u64, age_h: f64, now: i64) -> Comment {
        Comment {
            id: format!("c{seq}"),
            seq,
            stream: StreamId::new("s").unwrap(),
            user: UserRef {
                id: UserId::new("u").unwrap(),
                name: "u".into(),
            },
            text: String::new(),
            ts: now - (age_h * 3_600_000.0) as i64,
            offset_ms: 0,
            reply_to: None,
            likes,
            replies,
        }
    }

    #[test]
    fn the_formula_and_the_order() {
        let now = 10_000_000_000;
        let fresh = c(1, 10, 0, 0.0, now);
        assert!((score(&fresh, now) - 10.0 / 2f64.powf(1.5)).abs() < 1e-9);
        let replied = c(2, 0, 6, 0.0, now);
        assert!(
            score(&replied, now) > score(&fresh, now),
            "a reply counts twice a like"
        );
        let old = c(3, 10, 0, 10.0, now);
        assert!(
            score(&old, now) < score(&fresh, now),
            "engagement decays with age"
        );
        let mut all = vec![fresh, replied, old, c(4, 0, 0, 0.0, now)];
        rank(&mut all, now);
        assert_eq!(
            all.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![2, 1, 3, 4]
        );
    }
}
