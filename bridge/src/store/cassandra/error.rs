//! Driver errors as [`StoreError`]s.
//!
//! Every [`StoreError`] is retryable for the write path, and the embedded store reports I/O
//! trouble as [`StoreError::Backend`]; a cluster that cannot be reached or does not answer in
//! time is the same kind of trouble, so it becomes `Backend` too, with a message that says
//! "unavailable". A row that does not decode is `Corrupt`, as in the embedded store.

use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use wire::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CassError {
    /// The cluster could not be reached, had too few replicas alive or did not answer in time:
    /// the request may succeed when retried.
    #[error("cassandra is unavailable: {0}")]
    Unavailable(String),
    /// Cassandra refused the request (syntax, schema, permissions): a bug or a misconfiguration.
    #[error("cassandra rejected the request: {0}")]
    Rejected(String),
    /// A stored row or value does not decode.
    #[error("cassandra row: {0}")]
    Decode(String),
    /// The configuration or the keyspace's recorded layout does not allow starting.
    #[error("cassandra store: {0}")]
    Config(String),
}

impl From<CassError> for StoreError {
    fn from(e: CassError) -> StoreError {
        match e {
            CassError::Decode(m) => StoreError::Corrupt(m),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// Errors the server reports about the request itself, which a retry would not fix.
fn is_rejection(db: &DbError) -> bool {
    matches!(
        db,
        DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::ConfigError
            | DbError::AuthenticationError
            | DbError::Unauthorized
            | DbError::FunctionFailure { .. }
    )
}

fn attempt(e: &RequestAttemptError, msg: String) -> CassError {
    match e {
        RequestAttemptError::DbError(db, _) if is_rejection(db) => CassError::Rejected(msg),
        RequestAttemptError::SerializationError(_) => CassError::Rejected(msg),
        _ => CassError::Unavailable(msg),
    }
}

impl From<ExecutionError> for CassError {
    fn from(e: ExecutionError) -> CassError {
        let msg = e.to_string();
        match &e {
            ExecutionError::LastAttemptError(a) => attempt(a, msg),
            ExecutionError::PrepareError(p) => prepare(p, msg),
            ExecutionError::BadQuery(_) => CassError::Rejected(msg),
            _ => CassError::Unavailable(msg),
        }
    }
}

fn prepare(e: &PrepareError, msg: String) -> CassError {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt(first_attempt, msg),
        _ => CassError::Unavailable(msg),
    }
}

impl From<PrepareError> for CassError {
    fn from(e: PrepareError) -> CassError {
        let msg = e.to_string();
        prepare(&e, msg)
    }
}

impl From<NewSessionError> for CassError {
    fn from(e: NewSessionError) -> CassError {
        match e {
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
                CassError::Config(e.to_string())
            }
            // Unresolvable names, refused connections, metadata that did not arrive in time.
            _ => CassError::Unavailable(e.to_string()),
        }
    }
}

macro_rules! decode_errors {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for CassError {
            fn from(e: $t) -> CassError {
                CassError::Decode(e.to_string())
            }
        }
    )*};
}

decode_errors!(
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::SingleRowError,
    scylla::errors::MaybeFirstRowError,
    scylla::errors::DeserializationError,
    scylla::errors::TypeCheckError,
    serde_json::Error,
);
