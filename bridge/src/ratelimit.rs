//! Per-user comment rate limit.
//!
//! GCRA (the `governor` crate): a user may post `count` comments at once and then one every
//! `window / count`, which holds any `window` to at most about `count` comments without keeping
//! a timestamp per comment.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use wire::UserId;

pub struct UserRateLimit {
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
    clock: DefaultClock,
}

impl UserRateLimit {
    /// `count == 0` disables the limit.
    pub fn new(count: u32, window: Duration) -> Self {
        let limiter = NonZeroU32::new(count).and_then(|burst| {
            let period = window / burst.get();
            Quota::with_period(period).map(|q| DefaultKeyedRateLimiter::keyed(q.allow_burst(burst)))
        });
        UserRateLimit {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` consumes one unit of the user's quota; `Err` says how long until one is free.
    pub fn check(&self, user: &UserId) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets users whose quota is full again, so memory follows active users only.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_says_when() {
        let rl = UserRateLimit::new(3, Duration::from_secs(60));
        let u = UserId::new("u").unwrap();
        let other = UserId::new("v").unwrap();
        for _ in 0..3 {
            assert!(rl.check(&u).is_ok());
        }
        let wait = rl.check(&u).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(rl.check(&other).is_ok(), "limits are per user");
    }

    #[test]
    fn zero_disables() {
        let rl = UserRateLimit::new(0, Duration::from_secs(60));
        let u = UserId::new("u").unwrap();
        for _ in 0..1000 {
            assert!(rl.check(&u).is_ok());
        }
    }
}
