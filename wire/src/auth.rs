//! JWT claims, roles and the HS256 key every component verifies with.
//!
//! Only HS256 is accepted: a token whose header names another algorithm (including `none`) is
//! refused before its signature is looked at, so an unsigned token can never pass.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// What a user may do. Ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Broadcaster,
    Moderator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Broadcaster => "broadcaster",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }

    /// Broadcasters and admins run streams.
    pub fn can_manage_streams(self) -> bool {
        matches!(self, Role::Broadcaster | Role::Admin)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "broadcaster" => Ok(Role::Broadcaster),
            "moderator" => Ok(Role::Moderator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (viewer, broadcaster, moderator, admin)"
            )),
        }
    }
}

fn default_role() -> Role {
    Role::Viewer
}

/// The claims of a livecomments JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (`[A-Za-z0-9_-]{1,64}`).
    pub sub: String,
    /// Display name shown next to comments; defaults to `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_role")]
    pub role: Role,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Paying subscriber of the channel (used by subscriber-only chat).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subscriber: bool,
}

/// A verified user, derived from valid claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub name: String,
    pub role: Role,
    pub subscriber: bool,
    /// When the token stops being valid (seconds since the Unix epoch).
    pub exp: u64,
}

/// Longest display name kept; longer names are cut.
pub const MAX_NAME_CHARS: usize = 64;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid token subject: {0}")]
    BadSubject(#[from] crate::ids::IdError),
}

/// Signs and verifies tokens with one shared HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Verifies signature, algorithm and expiry, and turns the claims into an identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        let c = data.claims;
        let user = UserId::new(&c.sub)?;
        let name = c
            .name
            .as_deref()
            .map(|n| {
                n.chars()
                    .filter(|ch| !ch.is_control())
                    .take(MAX_NAME_CHARS)
                    .collect::<String>()
            })
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| c.sub.clone());
        Ok(Identity {
            user,
            name,
            role: c.role,
            subscriber: c.subscriber,
            exp: c.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn encode(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn now() -> u64 {
        crate::time::now_ms() as u64 / 1000
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            name: Some("Ann".into()),
            role: Role::Moderator,
            exp,
            iat: None,
            subscriber: false,
        }
    }

    #[test]
    fn round_trip() {
        let k = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = k.sign(&claims(now() + 60)).unwrap();
        let id = k.verify(&t).unwrap();
        assert_eq!(id.user.as_str(), "u1");
        assert_eq!(id.name, "Ann");
        assert_eq!(id.role, Role::Moderator);
    }

    #[test]
    fn refuses_wrong_key_expired_and_unsigned() {
        let k = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let other = JwtKeys::new(b"another secret of enough length!");
        assert!(k.verify(&other.sign(&claims(now() + 60)).unwrap()).is_err());
        assert!(k.verify(&k.sign(&claims(now() - 120)).unwrap()).is_err());
        // alg: none, no signature
        let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body =
            encode(format!(r#"{{"sub":"u1","role":"admin","exp":{}}}"#, now() + 60).as_bytes());
        assert!(k.verify(&format!("{header}.{body}.")).is_err());
        assert!(k.verify("garbage").is_err());
    }

    #[test]
    fn refuses_bad_subject() {
        let k = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let mut c = claims(now() + 60);
        c.sub = "a/b".into();
        assert!(matches!(
            k.verify(&k.sign(&c).unwrap()),
            Err(AuthError::BadSubject(_))
        ));
    }
}
