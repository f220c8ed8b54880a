//! MQTT topic names of the contract and the classification the broker's gatekeeper applies.
//!
//! Client → server topics (`post`) are never routed through the MQTT router: the gatekeeper
//! takes them off the connection, tags them with the verified identity and hands them to the
//! bridge. Server → client topics are published only by the system's internal links.

use crate::ids::{StreamId, UserId};

/// Comments posted by clients (QoS 1): `streams/{stream}/post`.
pub fn post(stream: &StreamId) -> String {
    format!("streams/{stream}/post")
}

/// Delivery frames for viewers: `streams/{stream}/comments`.
pub fn comments(stream: &StreamId) -> String {
    format!("streams/{stream}/comments")
}

/// The retained stream state (title, status): `streams/{stream}/state`.
pub fn state(stream: &StreamId) -> String {
    format!("streams/{stream}/state")
}

/// The pinned comment, retained: `streams/{stream}/pinned`.
pub fn pinned(stream: &StreamId) -> String {
    format!("streams/{stream}/pinned")
}

/// Aggregated reactions: `streams/{stream}/reactions`.
pub fn reactions(stream: &StreamId) -> String {
    format!("streams/{stream}/reactions")
}

/// Viewer counts: `streams/{stream}/presence`.
pub fn presence(stream: &StreamId) -> String {
    format!("streams/{stream}/presence")
}

/// Reactions and likes sent by clients: `streams/{stream}/react`.
pub fn react(stream: &StreamId) -> String {
    format!("streams/{stream}/react")
}

/// Viewer reports of comments (QoS 1): `streams/{stream}/report`.
pub fn report(stream: &StreamId) -> String {
    format!("streams/{stream}/report")
}

/// A user's private inbox (acks and rejects): `users/{user}/inbox`.
pub fn inbox(user: &UserId) -> String {
    format!("users/{user}/inbox")
}

/// The stream a `streams/{stream}/...` topic belongs to.
pub fn stream_of(topic: &str) -> Option<StreamId> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next()) {
        (Some("streams"), Some(s)) => StreamId::new(s).ok(),
        _ => None,
    }
}

/// What a client may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPublish {
    /// `streams/{stream}/post`
    Post(StreamId),
    /// `streams/{stream}/report`
    Report(StreamId),
    /// `streams/{stream}/react` (QoS 0 is enough)
    React(StreamId),
}

/// Server → client topic kinds under `streams/{stream}/`; clients may subscribe to these.
pub const STREAM_SERVER_TOPICS: &[&str] = &["comments", "state", "pinned", "reactions", "presence"];

/// Parses a topic a client publishes to. `None` means the publish is not allowed.
pub fn parse_client_publish(topic: &str) -> Option<ClientPublish> {
    let mut levels = topic.split('/');
    let (Some("streams"), Some(stream), Some(kind), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    let stream = StreamId::new(stream).ok()?;
    match kind {
        "post" => Some(ClientPublish::Post(stream)),
        "report" => Some(ClientPublish::Report(stream)),
        "react" => Some(ClientPublish::React(stream)),
        _ => None,
    }
}

/// What a subscription filter asks for, as far as the gatekeeper is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// A filter inside one concrete stream: `streams/{stream}/comments`, `.../state`,
    /// `streams/{stream}/+` or `streams/{stream}/#`. `topics` are the concrete server topics it
    /// covers: the router is only ever given those, so overlapping filters of one client never
    /// deliver a message twice.
    Stream {
        stream: StreamId,
        topics: Vec<String>,
    },
    /// `users/{user}/inbox` for this user.
    Inbox(UserId),
}

/// Classifies a subscription filter. `None` means the filter is refused: wildcards across
/// streams or users (`#`, `streams/+/comments`), system topics (`$SYS/#`), client → server
/// topics, anything unknown.
pub fn parse_subscribe(filter: &str) -> Option<SubscribeTarget> {
    let levels: Vec<&str> = filter.split('/').collect();
    match levels.as_slice() {
        ["streams", stream, rest @ ..] => {
            let stream = StreamId::new(stream).ok()?;
            let topics = match rest {
                ["#"] | ["+"] => STREAM_SERVER_TOPICS
                    .iter()
                    .map(|kind| format!("streams/{stream}/{kind}"))
                    .collect(),
                [kind] if STREAM_SERVER_TOPICS.contains(kind) => vec![filter.to_owned()],
                _ => return None,
            };
            Some(SubscribeTarget::Stream { stream, topics })
        }
        ["users", user, "inbox"] => Some(SubscribeTarget::Inbox(UserId::new(user).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str) -> StreamId {
        StreamId::new(id).unwrap()
    }

    #[test]
    fn only_post_topics_are_publishable() {
        assert_eq!(
            parse_client_publish("streams/s1/post"),
            Some(ClientPublish::Post(s("s1")))
        );
        assert_eq!(
            parse_client_publish("streams/s1/report"),
            Some(ClientPublish::Report(s("s1")))
        );
        for bad in [
            "streams/s1/comments",
            "streams/s1/state",
            "streams/+/post",
            "streams/s1/post/x",
            "users/u1/inbox",
            "streams/s 1/post",
            "$SYS/x",
            "",
            "#",
        ] {
            assert_eq!(parse_client_publish(bad), None, "{bad}");
        }
    }

    #[test]
    fn subscriptions_are_limited_to_one_stream_or_own_inbox() {
        let all: Vec<String> = STREAM_SERVER_TOPICS
            .iter()
            .map(|k| format!("streams/s1/{k}"))
            .collect();
        for (ok, topics) in [
            (
                "streams/s1/comments",
                vec!["streams/s1/comments".to_string()],
            ),
            ("streams/s1/state", vec!["streams/s1/state".to_string()]),
            ("streams/s1/#", all.clone()),
            ("streams/s1/+", all),
        ] {
            assert_eq!(
                parse_subscribe(ok),
                Some(SubscribeTarget::Stream {
                    stream: s("s1"),
                    topics
                }),
                "{ok}"
            );
        }
        assert_eq!(
            parse_subscribe("users/u1/inbox"),
            Some(SubscribeTarget::Inbox(UserId::new("u1").unwrap()))
        );
        for bad in [
            "#",
            "+/+/+",
            "streams/#",
            "streams/+/comments",
            "streams/+/#",
            "streams/s1/post",
            "streams/s1/report",
            "streams/s1/react",
            "streams/s1/comments/#",
            "users/+/inbox",
            "users/#",
            "users/u1/#",
            "$SYS/#",
            "$share/g/streams/s1/comments",
        ] {
            assert_eq!(parse_subscribe(bad), None, "{bad}");
        }
    }
}
