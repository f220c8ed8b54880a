//! One module per resource, each returning a `Router<AppState>`.

pub mod comments;
pub mod engagement;
pub mod moderation;
pub mod ops;
pub mod streams;
