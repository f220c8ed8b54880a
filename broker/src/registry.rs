//! Node-local bookkeeping of client connections.
//!
//! - **Takeover**: MQTT says a new connection with the same client id replaces the old one. The
//!   key here is `(verified user, client id)`, so one user can never kick another off by
//!   choosing the same id.
//! - **Router slots**: router sessions are named `c{slot}` with the lowest free slot, so the
//!   router's per-client-id records (which it never frees) stay bounded by the peak number of
//!   concurrent connections instead of growing with every client id ever seen.
//! - **Inboxes**: `users/{user}/inbox` is served by the node itself: an answer for a user goes
//!   to that user's connections that subscribed to it, without a router filter per user.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::UserId;

type TakeoverKey = (UserId, String);
/// A user's connections that subscribed to the inbox: (connection uid, its queue).
type InboxQueues = Vec<(u64, mpsc::Sender<Bytes>)>;

#[derive(Default)]
pub(crate) struct Registry {
    next_uid: AtomicU64,
    sessions: Mutex<HashMap<TakeoverKey, (u64, CancellationToken)>>,
    slots: Mutex<Slots>,
    inboxes: Mutex<HashMap<UserId, InboxQueues>>,
}

#[derive(Default)]
struct Slots {
    free: BTreeSet<u32>,
    next: u32,
}

/// Gives a router slot back when the connection ends.
pub(crate) struct SlotGuard {
    registry: Arc<Registry>,
    pub slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self
            .registry
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.free.insert(self.slot);
    }
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

    pub(crate) fn acquire_slot(self: &Arc<Self>) -> SlotGuard {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match slots.free.pop_first() {
            Some(s) => s,
            None => {
                slots.next += 1;
                slots.next - 1
            }
        };
        SlotGuard {
            registry: self.clone(),
            slot,
        }
    }

    pub(crate) fn subscribe_inbox(&self, user: &UserId, uid: u64, tx: mpsc::Sender<Bytes>) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
        let list = inboxes.entry(user.clone()).or_default();
        if !list.iter().any(|(u, _)| *u == uid) {
            list.push((uid, tx));
        }
    }

    pub(crate) fn unsubscribe_inbox(&self, user: &UserId, uid: u64) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = inboxes.get_mut(user) {
            list.retain(|(u, _)| *u != uid);
            if list.is_empty() {
                inboxes.remove(user);
            }
        }
    }

    /// Hands an inbox message to every local connection of the user that subscribed to its
    /// inbox. A connection whose queue is full misses it (the client's retry with the same
    /// `client_msg_id` gets the answer again). Returns the number of connections reached.
    pub(crate) fn deliver_inbox(&self, user: &UserId, payload: &Bytes) -> usize {
        let inboxes = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = inboxes.get(user) else {
            return 0;
        };
        list.iter()
            .filter(|(_, tx)| tx.try_send(payload.clone()).is_ok())
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

    #[test]
    fn slots_are_reused_lowest_first() {
        let r = Arc::new(Registry::default());
        let s0 = r.acquire_slot();
        let s1 = r.acquire_slot();
        let s2 = r.acquire_slot();
        assert_eq!((s0.slot, s1.slot, s2.slot), (0, 1, 2));
        drop(s1);
        drop(s0);
        assert_eq!(r.acquire_slot().slot, 0);
    }

    #[tokio::test]
    async fn inbox_reaches_subscribed_connections_only() {
        let r = Registry::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        r.subscribe_inbox(&u("alice"), 1, tx1);
        r.subscribe_inbox(&u("alice"), 2, tx2);
        assert_eq!(r.deliver_inbox(&u("alice"), &Bytes::from_static(b"x")), 2);
        assert_eq!(r.deliver_inbox(&u("bob"), &Bytes::from_static(b"y")), 0);
        assert_eq!(rx1.recv().await.unwrap(), "x");
        assert_eq!(rx2.recv().await.unwrap(), "x");
        r.unsubscribe_inbox(&u("alice"), 1);
        assert_eq!(r.deliver_inbox(&u("alice"), &Bytes::from_static(b"z")), 1);
    }
}
