//! The fixed posting schedule: comment `seq` is due at `start + seq / rate`, whatever happened
//! before it. Poster `p` of `P` sends the comments with `seq % P == p`, so the total rate is
//! exact however many posters there are, and a late poster shows up as lag, not as a lower
//! rate hidden in the averages.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` comments per second for `seconds`, from `start`.
    pub fn new(start: Instant, rate: f64, seconds: f64) -> Schedule {
        let total = if rate > 0.0 {
            (rate * seconds).round() as u64
        } else {
            0
        };
        Schedule { start, rate, total }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Comments in the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When comment `seq` is due.
    pub fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_secs_f64(seq as f64 / self.rate)
    }

    /// The comments poster `poster` of `posters` sends, in order.
    pub fn seqs_of(&self, poster: usize, posters: usize) -> impl Iterator<Item = u64> {
        (poster as u64..self.total).step_by(posters.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posters_split_the_schedule_exactly() {
        let s = Schedule::new(Instant::now(), 100.0, 2.5);
        assert_eq!(s.total(), 250);
        let mut all: Vec<u64> = (0..3).flat_map(|p| s.seqs_of(p, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..250).collect::<Vec<_>>());
        assert_eq!(s.due(100) - s.start(), Duration::from_secs(1));
        assert_eq!(s.due(1) - s.start(), Duration::from_millis(10));
    }
}
