//! Posting over HTTP, the replay window and catch-up.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wire::bus::{Author, Origin, Submission, SubmissionKind};
use wire::event::Event;
use wire::inbox::Answer;
use wire::store::ReplayCursor;
use wire::time::now_ms;

use super::streams::parse_stream_id;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// Default page size.
const DEFAULT_LIMIT: usize = 500;
/// Longest replay window one request may ask for (seconds).
const MAX_WINDOW_S: f64 = 24.0 * 3600.0;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/streams/{stream}/comments", get(list).post(create))
}

/// `202` body: `{"status":"accepted","id","seq","client_msg_id"}`, or for a post a rule
/// held for review `{"status":"held","id":"<queue item>","client_msg_id","message"}`.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Created {
    Accepted {
        id: String,
        seq: u64,
        client_msg_id: String,
    },
    Held {
        id: String,
        client_msg_id: String,
        message: String,
    },
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let stream = parse_stream_id(&stream)?;
    let submission = Submission {
        kind: SubmissionKind::Post,
        stream,
        author: Author::from(&caller.0),
        payload: body,
        origin: Origin::Http,
        received_at_ms: now_ms(),
    };
    let created = match state.ingest.submit(submission).await {
        Ok(Answer::Accepted(a)) => Created::Accepted {
            id: a.id,
            seq: a.seq,
            client_msg_id: a.client_msg_id,
        },
        Ok(Answer::Held(h)) => Created::Held {
            id: h.id,
            client_msg_id: h.client_msg_id,
            message: h.message,
        },
        Ok(Answer::Reported(_)) => {
            return Err(ApiError::Unavailable("unexpected answer to a post".into()))
        }
        Err(r) => return Err(ApiError::Rejected(r)),
    };
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Replay: window start, seconds since the stream started.
    start_time: Option<f64>,
    /// Replay: window length in seconds (default 60).
    duration: Option<f64>,
    /// Catch-up: comments after this `seq`.
    after_seq: Option<u64>,
    limit: Option<usize>,
    pagination_token: Option<String>,
    /// Replay only: `new` (default, timeline order) or `top` (engagement, one page).
    order: Option<String>,
}

#[derive(Serialize)]
struct Page {
    stream: String,
    /// Events shaped like those of live frames (`"type": "comment"`, and in catch-up also
    /// `retract` and `restore`), so one parser serves both.
    comments: Vec<Event>,
    /// Present when `limit` cut the result: pass it as `pagination_token` with the same query.
    next_token: Option<String>,
}

/// A page as JSON, written into one buffer sized for it up front: axum's `Json` starts at 128
/// bytes and grows a `BytesMut` write by write, which cost ~15 % of a 500-comment replay read.
struct PageBody(Page);

/// Bytes per comment to reserve (a 200-character comment is ~400 bytes of JSON).
const COMMENT_JSON_BYTES: usize = 512;

impl IntoResponse for PageBody {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(256 + COMMENT_JSON_BYTES * self.0.comments.len());
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "encoding a page failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// What a page token resumes from.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Replay(ReplayCursor),
    CatchUp(u64),
}

impl Token {
    fn encode(&self) -> String {
        let raw = match self {
            Token::Replay(c) => format!("r:{}:{}", c.offset_ms, c.seq),
            Token::CatchUp(seq) => format!("c:{seq}"),
        };
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(s: &str) -> Option<Token> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let parts: Vec<&str> = raw.split(':').collect();
        match parts.as_slice() {
            ["r", o, s] => Some(Token::Replay(ReplayCursor {
                offset_ms: o.parse().ok()?,
                seq: s.parse().ok()?,
            })),
            ["c", s] => Some(Token::CatchUp(s.parse().ok()?)),
            _ => None,
        }
    }
}

fn seconds_to_ms(name: &str, v: f64) -> Result<u64, ApiError> {
    if !v.is_finite() || !(0.0..=1e12).contains(&v) {
        return Err(ApiError::bad_request(format!(
            "{name} must be a non-negative number of seconds"
        )));
    }
    Ok((v * 1000.0).round() as u64)
}

async fn list(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<PageBody, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = parse_stream_id(&stream)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > state.max_page {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page
        )));
    }
    let Some(record) = state.streams.get(&id, Duration::from_secs(60)).await? else {
        return Err(ApiError::NotFound(format!("stream {id} does not exist")));
    };
    let token = match &q.pagination_token {
        Some(t) => Some(
            Token::decode(t)
                .ok_or_else(|| ApiError::bad_request("pagination_token is not valid"))?,
        ),
        None => None,
    };
    let store = state.streams.store();

    match q.order.as_deref() {
        None | Some("new") | Some("top") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order {other:?}: new or top"
            )))
        }
    }
    if q.order.is_some() && q.after_seq.is_some() {
        return Err(ApiError::bad_request("order goes with start_time (replay)"));
    }
    let (comments, next) = match (q.start_time, q.after_seq) {
        (Some(start), None) => {
            let from = seconds_to_ms("start_time", start)?;
            let duration = q.duration.unwrap_or(60.0);
            if duration <= 0.0 || duration > MAX_WINDOW_S {
                return Err(ApiError::bad_request(format!(
                    "duration must be more than 0 and at most {MAX_WINDOW_S} seconds"
                )));
            }
            let to = from + seconds_to_ms("duration", duration)?;
            let after = match token {
                Some(Token::Replay(c)) => Some(c),
                None => None,
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "pagination_token belongs to a catch-up query",
                    ))
                }
            };
            if q.order.as_deref() == Some("top") {
                if after.is_some() {
                    return Err(ApiError::bad_request("order=top returns one page"));
                }
                let mut page = store
                    .latest(&id, from, to, super::engagement::MAX_RANKED)
                    .await?;
                // An ended stream ranks as of its end (a cached record may not know it ended
                // yet; then it ranks as of now, as a live one does).
                super::engagement::rank(&mut page, record.ended_at.unwrap_or_else(now_ms));
                page.truncate(limit);
                return Ok(PageBody(Page {
                    stream: id.to_string(),
                    comments: page.into_iter().map(Event::Comment).collect(),
                    next_token: None,
                }));
            }
            let page = store.replay(&id, from, to, after, limit).await?;
            let next = (page.len() == limit).then(|| {
                let last = &page[page.len() - 1];
                Token::Replay(ReplayCursor {
                    offset_ms: last.offset_ms,
                    seq: last.seq,
                })
            });
            (page.into_iter().map(Event::Comment).collect(), next)
        }
        (None, Some(after_seq)) => {
            if q.duration.is_some() {
                return Err(ApiError::bad_request("duration goes with start_time"));
            }
            let after = match token {
                Some(Token::CatchUp(seq)) => seq.max(after_seq),
                None => after_seq,
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "pagination_token belongs to a replay query",
                    ))
                }
            };
            let page = store.after_seq(&id, after, limit).await?;
            let next = (page.len() == limit).then(|| Token::CatchUp(page[page.len() - 1].seq()));
            (page, next)
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either start_time (replay) or after_seq (catch-up), not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "give start_time (replay window, seconds) or after_seq (catch-up)",
            ))
        }
    };
    Ok(PageBody(Page {
        stream: id.to_string(),
        comments,
        next_token: next.map(|t| t.encode()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        for t in [
            Token::Replay(ReplayCursor {
                offset_ms: 93_120,
                seq: 17,
            }),
            Token::CatchUp(42),
        ] {
            assert_eq!(Token::decode(&t.encode()), Some(t));
        }
        assert_eq!(Token::decode("not a token"), None);
        assert_eq!(Token::decode(&URL_SAFE_NO_PAD.encode("r:x:1")), None);
    }
}
