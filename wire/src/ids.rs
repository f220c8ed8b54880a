//! Stream and user identifiers.
//!
//! Both are `[A-Za-z0-9_-]{1,64}`: safe inside an MQTT topic level (no `/`, `+`, `#`), inside a
//! URL path segment and inside a storage key, so they never need escaping anywhere.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is longer than 64 characters")]
    TooLong,
    #[error("identifier may contain only A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
}

/// Checks the identifier grammar shared by streams and users.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > 64 {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (`Arc<str>`): ids travel through every queue of the data path.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Identifies a live stream (an event that viewers comment on).
    StreamId
);
id_type!(
    /// Identifies a user; it is the JWT `sub` claim.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_grammar() {
        assert!(StreamId::new("final-2026_A").is_ok());
        assert!(UserId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(StreamId::new(""), Err(IdError::Empty));
        assert_eq!(StreamId::new(&"a".repeat(65)), Err(IdError::TooLong));
        for bad in ["a/b", "a+", "#", "a b", "é", "a.b", "$SYS"] {
            assert_eq!(UserId::new(bad), Err(IdError::BadCharacter), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: StreamId = serde_json::from_str("\"s1\"").unwrap();
        assert_eq!(ok.as_str(), "s1");
        assert!(serde_json::from_str::<StreamId>("\"s/1\"").is_err());
    }
}
