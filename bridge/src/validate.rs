//! Parsing and validation of a post body, shared by MQTT and HTTP submissions.
//!
//! Order matters for the client: the `client_msg_id` is read first, so that even a rejection
//! for a bad text can be matched to the message that caused it.

use serde_json::Value;
use wire::inbox::{RejectCode, Rejected};

/// Longest accepted `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;
/// Longest accepted `reply_to`, in bytes (comment ids are 26-character ULIDs).
const MAX_REPLY_TO: usize = 64;

/// A valid post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// Trimmed of surrounding whitespace.
    pub text: String,
    pub client_msg_id: String,
    pub reply_to: Option<String>,
}

fn reject(id: &Option<String>, code: RejectCode, message: impl Into<String>) -> Rejected {
    Rejected::new(id.clone(), code, message)
}

/// Parses `{"text": "...", "client_msg_id": "...", "reply_to": null}`.
pub fn parse_post(payload: &[u8], max_chars: usize) -> Result<Post, Rejected> {
    let none = None;
    let Ok(body) = std::str::from_utf8(payload) else {
        return Err(reject(
            &none,
            RejectCode::Invalid,
            "payload is not valid UTF-8",
        ));
    };
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Err(reject(
            &none,
            RejectCode::Invalid,
            "payload is not valid JSON",
        ));
    };
    let Value::Object(mut obj) = value else {
        return Err(reject(
            &none,
            RejectCode::Invalid,
            "payload must be a JSON object",
        ));
    };

    let client_msg_id = match obj.remove("client_msg_id") {
        Some(Value::String(id)) => id,
        Some(_) => {
            return Err(reject(
                &none,
                RejectCode::Invalid,
                "client_msg_id must be a string",
            ));
        }
        None => {
            return Err(reject(
                &none,
                RejectCode::Invalid,
                "client_msg_id is required",
            ))
        }
    };
    if client_msg_id.is_empty()
        || client_msg_id.len() > MAX_CLIENT_MSG_ID
        || client_msg_id.chars().any(char::is_control)
    {
        return Err(reject(
            &none,
            RejectCode::Invalid,
            format!("client_msg_id must be 1-{MAX_CLIENT_MSG_ID} bytes without control characters"),
        ));
    }
    let id = Some(client_msg_id.clone());

    let text = match obj.remove("text") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(reject(&id, RejectCode::Invalid, "text must be a string")),
        None => return Err(reject(&id, RejectCode::Invalid, "text is required")),
    };
    if text.chars().any(char::is_control) {
        return Err(reject(
            &id,
            RejectCode::Invalid,
            "text must not contain control characters",
        ));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(reject(&id, RejectCode::Empty, "text is empty"));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(reject(
            &id,
            RejectCode::TooLong,
            format!("text is {chars} characters; the limit is {max_chars}"),
        ));
    }

    let reply_to = match obj.remove("reply_to") {
        None | Some(Value::Null) => None,
        Some(Value::String(r))
            if !r.is_empty()
                && r.len() <= MAX_REPLY_TO
                && r.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(r)
        }
        Some(_) => {
            return Err(reject(
                &id,
                RejectCode::Invalid,
                "reply_to must be null or a comment id",
            ))
        }
    };

    Ok(Post {
        text: text.to_owned(),
        client_msg_id,
        reply_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(payload: &[u8]) -> (RejectCode, Option<String>) {
        let r = parse_post(payload, 10).unwrap_err();
        (r.code, r.client_msg_id)
    }

    #[test]
    fn accepts_a_normal_post() {
        let p = parse_post(
            br#"{"text":"  h\u00e9llo  ","client_msg_id":"c1","reply_to":null,"extra":1}"#,
            10,
        )
        .unwrap();
        assert_eq!(p.text, "héllo");
        assert_eq!(p.client_msg_id, "c1");
        assert_eq!(p.reply_to, None);
        let p = parse_post(
            br#"{"text":"x","client_msg_id":"c1","reply_to":"01ABC"}"#,
            10,
        )
        .unwrap();
        assert_eq!(p.reply_to.as_deref(), Some("01ABC"));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(parse_post(
            "{\"text\":\"éééééééééé\",\"client_msg_id\":\"c\"}".as_bytes(),
            10
        )
        .is_ok());
        assert_eq!(
            code("{\"text\":\"ééééééééééé\",\"client_msg_id\":\"c\"}".as_bytes()).0,
            RejectCode::TooLong
        );
    }

    #[test]
    fn rejects_with_the_right_code() {
        assert_eq!(code(b"\xff\xfe"), (RejectCode::Invalid, None));
        assert_eq!(code(b"{not json"), (RejectCode::Invalid, None));
        assert_eq!(code(b"[1]"), (RejectCode::Invalid, None));
        assert_eq!(code(br#"{"text":"x"}"#), (RejectCode::Invalid, None));
        assert_eq!(
            code(br#"{"text":"x","client_msg_id":""}"#),
            (RejectCode::Invalid, None)
        );
        let c1 = Some("c1".to_string());
        assert_eq!(
            code(br#"{"text":"   ","client_msg_id":"c1"}"#),
            (RejectCode::Empty, c1.clone())
        );
        assert_eq!(
            code(br#"{"text":"","client_msg_id":"c1"}"#),
            (RejectCode::Empty, c1.clone())
        );
        assert_eq!(
            code(br#"{"text":"a\u0007b","client_msg_id":"c1"}"#),
            (RejectCode::Invalid, c1.clone())
        );
        assert_eq!(
            code(br#"{"text":"a\nb","client_msg_id":"c1"}"#),
            (RejectCode::Invalid, c1.clone())
        );
        assert_eq!(
            code(br#"{"text":5,"client_msg_id":"c1"}"#),
            (RejectCode::Invalid, c1.clone())
        );
        assert_eq!(
            code(br#"{"text":"x","client_msg_id":"c1","reply_to":"../x"}"#),
            (RejectCode::Invalid, c1)
        );
    }
}
