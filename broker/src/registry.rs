//! Node-local bookkeeping of client connections.
//!
//! - **Takeover**: MQTT says a new connection with the same client id replaces the old one. The
//!   key here is `(verified user, client id)`, so one user can never kick another off by
//!   choosing the same id.
//! - **Direct messages**: `users/{user}/inbox` is served by the node itself, and so are the
//!   private frames a shadow-banned author sees: a message for a user goes to that user's
//!   connections (each one writes it only if it subscribed to the topic), without a fan-out
//!   topic per user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::UserId;

type TakeoverKey = (UserId, String);
/// A message for one user's connections: (topic, payload).
pub(crate) type Direct = (String, Bytes);
/// A user's connections: (connection uid, its queue of direct messages).
type DirectQueues = Vec<(u64, mpsc::Sender<Direct>)>;

#[derive(Default)]
pub(crate) struct Registry {
    next_uid: AtomicU64,
    sessions: Mutex<HashMap<TakeoverKey, (u64, CancellationToken)>>,
    direct: Mutex<HashMap<UserId, DirectQueues>>,
}

impl Registry {
    pub(crate) fn next_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection under `(user, client_id)` and cancels the one it replaces.
    /// Returns the token that cancels this connection when it is replaced in turn.
    pub(crate) fn take_over(&self, user: &UserId, client_id: &str, uid: u64) -> CancellationToken {
        let token = CancellationToken::new();
        if client_id.is_empty() {
            return token;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, old)) =
            sessions.insert((user.clone(), client_id.to_owned()), (uid, token.clone()))
        {
            old.cancel();
        }
        token
    }

    /// Forgets a connection's takeover entry unless a newer connection owns it already.
    pub(crate) fn leave(&self, user: &UserId, client_id: &str, uid: u64) {
        if client_id.is_empty() {
            return;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (user.clone(), client_id.to_owned());
        if sessions.get(&key).is_some_and(|(owner, _)| *owner == uid) {
            sessions.remove(&key);
        }
    }

    /// Registers a connection for direct messages to its user; true for the user's first
    /// connection on this node.
    pub(crate) fn attach(&self, user: &UserId, uid: u64, tx: mpsc::Sender<Direct>) -> bool {
        let mut direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        let list = direct.entry(user.clone()).or_default();
        list.push((uid, tx));
        list.len() == 1
    }

    /// True when it was the user's last connection on this node.
    pub(crate) fn detach(&self, user: &UserId, uid: u64) -> bool {
        let mut direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = direct.get_mut(user) {
            list.retain(|(u, _)| *u != uid);
            if list.is_empty() {
                direct.remove(user);
                return true;
            }
        }
        false
    }

    /// Hands a message to every local connection of the user; each writes it only if it
    /// subscribed to `topic`. A connection whose queue is full misses it (an inbox answer is
    /// given again to a retry with the same `client_msg_id`). Returns the connections reached.
    pub(crate) fn deliver(&self, user: &UserId, topic: &str, payload: &Bytes) -> usize {
        let direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = direct.get(user) else {
            return 0;
        };
        list.iter()
            .filter(|(_, tx)| tx.try_send((topic.to_owned(), payload.clone())).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn takeover_is_per_user() {
        let r = Registry::default();
        let a1 = r.take_over(&u("alice"), "phone", 1);
        let b1 = r.take_over(&u("bob"), "phone", 2);
        assert!(!a1.is_cancelled() && !b1.is_cancelled());
        let a2 = r.take_over(&u("alice"), "phone", 3);
        assert!(
            a1.is_cancelled(),
            "same user, same client id: the old one goes"
        );
        assert!(!b1.is_cancelled() && !a2.is_cancelled());
        r.leave(&u("alice"), "phone", 1); // the replaced one leaving must not remove the new
        let a3 = r.take_over(&u("alice"), "phone", 4);
        assert!(a2.is_cancelled());
        assert!(!a3.is_cancelled());
    }

    #[tokio::test]
    async fn direct_messages_reach_the_users_connections() {
        let r = Registry::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        r.attach(&u("alice"), 1, tx1);
        r.attach(&u("alice"), 2, tx2);
        assert_eq!(r.deliver(&u("alice"), "t", &Bytes::from_static(b"x")), 2);
        assert_eq!(r.deliver(&u("bob"), "t", &Bytes::from_static(b"y")), 0);
        assert_eq!(
            rx1.recv().await.unwrap(),
            ("t".to_string(), Bytes::from_static(b"x"))
        );
        assert_eq!(rx2.recv().await.unwrap().1, "x");
        r.detach(&u("alice"), 1);
        assert_eq!(r.deliver(&u("alice"), "t", &Bytes::from_static(b"z")), 1);
        r.detach(&u("alice"), 2);
        assert!(
            r.direct.lock().unwrap().is_empty(),
            "no entry left for a gone user"
        );
    }
}
