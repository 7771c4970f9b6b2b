//! A sliding-window counter of fixed sub-buckets. Plain Rust with an injected clock.
//!
//! The window W is cut into `BUCKETS` buckets of width g = ceil(W / BUCKETS) and the counter
//! keeps `BUCKETS + 1` of them. A call at time t counts every admission in those buckets, which
//! cover [t - W - g, t] at most and always (t - W, t]. So:
//! - no window of length W ever admits more than the limit (the count never misses an admission
//!   inside the window), and
//! - a call is refused at most g earlier than an ideal sliding log would refuse it: that is the
//!   granularity (0.5 s for the per-minute limits).
//!
//! The window keeps the total of its buckets, so that a check that fits reads one number
//! under the table's lock instead of summing the buckets, and when its next bucket starts, so
//! that a check inside the newest bucket divides nothing.
//!
//! Memory: 8 + 8 + 8 + 8 + 4 + 4 x (BUCKETS + 1) = 520 bytes per key, whatever the limit.

/// Buckets per window: the granularity is W / 120 (500 ms for a one-minute window).
pub const BUCKETS: u64 = 120;
const RING: usize = BUCKETS as usize + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Window {
    window_us: u64,
    /// Tick (time / bucket width) of the newest bucket.
    newest_tick: u64,
    /// When the bucket after the newest starts: until then the window does not move.
    next_tick_us: u64,
    /// The sum of `counts`.
    total: u64,
    /// Index of the newest bucket in `counts`; the oldest follows it.
    newest: u32,
    counts: [u32; RING],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The cost fits.
    Fits,
    /// The cost does not fit; with no other admissions it would fit after this long.
    Refused { retry_after_us: u64 },
}

impl Window {
    /// The content of an unused slot.
    pub const EMPTY: Window = Window {
        window_us: BUCKETS,
        newest_tick: 0,
        next_tick_us: 0,
        total: 0,
        newest: 0,
        counts: [0; RING],
    };

    /// An empty window of `window_us` microseconds (at least `BUCKETS`).
    pub fn new(window_us: u64, now_us: u64) -> Window {
        let window_us = window_us.max(BUCKETS);
        let width = window_us.div_ceil(BUCKETS);
        let newest_tick = now_us / width;
        Window {
            window_us,
            newest_tick,
            next_tick_us: (newest_tick + 1) * width,
            total: 0,
            newest: 0,
            counts: [0; RING],
        }
    }

    fn width(&self) -> u64 {
        self.window_us.div_ceil(BUCKETS)
    }

    /// Moves the window to `now_us`, dropping the buckets that fell out. Time never runs back
    /// for a window: an earlier `now_us` counts into the newest bucket, which only over-counts.
    fn advance(&mut self, now_us: u64) {
        if now_us < self.next_tick_us {
            return;
        }
        let width = self.width();
        let tick = now_us / width;
        self.next_tick_us = (tick.max(self.newest_tick) + 1) * width;
        if tick <= self.newest_tick {
            return;
        }
        let steps = tick - self.newest_tick;
        if steps >= RING as u64 {
            self.counts = [0; RING];
            self.total = 0;
        } else {
            for _ in 0..steps {
                self.newest = (self.newest + 1) % RING as u32;
                self.total -= u64::from(self.counts[self.newest as usize]);
                self.counts[self.newest as usize] = 0;
            }
        }
        self.newest_tick = tick;
    }

    /// Admissions counted against a call at `now_us`.
    pub fn used(&mut self, now_us: u64) -> u64 {
        self.advance(now_us);
        self.total
    }

    /// Whether `cost` fits under `limit` at `now_us`, without taking it.
    pub fn check(&mut self, now_us: u64, limit: u64, cost: u64) -> Verdict {
        let used = self.used(now_us);
        if used + cost <= limit {
            return Verdict::Fits;
        }
        // Buckets leave the window oldest first, one per tick.
        let mut left = used;
        for k in 1..=RING as u64 {
            let oldest = (self.newest as u64 + k) % RING as u64;
            left -= u64::from(self.counts[oldest as usize]);
            if left + cost <= limit {
                let at = (self.newest_tick + k) * self.width();
                return Verdict::Refused {
                    retry_after_us: at.saturating_sub(now_us).max(1),
                };
            }
        }
        // Only a cost above the limit never fits; callers refuse that as bad input.
        Verdict::Refused {
            retry_after_us: u64::MAX,
        }
    }

    /// Takes `cost` at `now_us` (after a `check` that said it fits).
    pub fn take(&mut self, now_us: u64, cost: u64) {
        self.advance(now_us);
        let index = self.newest as usize;
        self.set(
            index,
            self.counts[index].saturating_add(u32::try_from(cost).unwrap_or(u32::MAX)),
        );
    }

    /// Sets a bucket's count, keeping the total.
    fn set(&mut self, index: usize, count: u32) {
        self.total = self.total - u64::from(self.counts[index]) + u64::from(count);
        self.counts[index] = count;
    }

    /// Corrects what was taken at `at_us` by `delta` (a reservation settled to what was used),
    /// in the bucket it was counted in. Nothing when that bucket has left the window: the
    /// reservation no longer counts against anything.
    pub fn adjust(&mut self, now_us: u64, at_us: u64, delta: i64) {
        self.advance(now_us);
        let age = self.newest_tick.saturating_sub(at_us / self.width());
        if age >= RING as u64 {
            return;
        }
        let index = ((self.newest as u64 + RING as u64 - age) % RING as u64) as usize;
        let bucket = self.counts[index];
        let magnitude = u32::try_from(delta.unsigned_abs()).unwrap_or(u32::MAX);
        self.set(
            index,
            if delta < 0 {
                bucket.saturating_sub(magnitude)
            } else {
                bucket.saturating_add(magnitude)
            },
        );
    }

    pub fn window_us(&self) -> u64 {
        self.window_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;
    const MINUTE: u64 = 60 * SEC;

    fn try_take(w: &mut Window, now: u64, limit: u64, cost: u64) -> Verdict {
        let verdict = w.check(now, limit, cost);
        if verdict == Verdict::Fits {
            w.take(now, cost);
        }
        verdict
    }

    #[test]
    fn a_burst_up_to_the_limit_fits_and_the_next_call_does_not() {
        let mut w = Window::new(MINUTE, 1_000 * SEC);
        for i in 0..50 {
            assert_eq!(try_take(&mut w, 1_000 * SEC + i, 50, 1), Verdict::Fits);
            assert_eq!(w.used(1_000 * SEC + i), i + 1);
        }
        assert!(matches!(
            try_take(&mut w, 1_000 * SEC + 50, 50, 1),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn the_window_edge_is_exact_to_one_bucket() {
        let start = 7_000 * SEC + 123;
        let mut w = Window::new(MINUTE, start);
        assert_eq!(try_take(&mut w, start, 1, 1), Verdict::Fits);
        // Within the window: refused, and told when it will fit.
        let Verdict::Refused { retry_after_us } = w.check(start + MINUTE - 1, 1, 1) else {
            panic!("admitted inside the window");
        };
        let retry_at = start + MINUTE - 1 + retry_after_us;
        // Never before the true window has passed, never more than one bucket after it.
        assert!(retry_at >= start + MINUTE, "{retry_at}");
        assert!(retry_at <= start + MINUTE + MINUTE / BUCKETS, "{retry_at}");
        assert!(matches!(
            w.check(retry_at - 1, 1, 1),
            Verdict::Refused { .. }
        ));
        assert_eq!(w.check(retry_at, 1, 1), Verdict::Fits);
    }

    #[test]
    fn cost_counts_as_that_many_calls() {
        let mut w = Window::new(MINUTE, 0);
        assert_eq!(try_take(&mut w, 10, 10, 7), Verdict::Fits);
        assert!(matches!(
            try_take(&mut w, 20, 10, 4),
            Verdict::Refused { .. }
        ));
        assert_eq!(try_take(&mut w, 30, 10, 3), Verdict::Fits);
        assert_eq!(w.used(40), 10);
    }

    #[test]
    fn a_refusal_takes_nothing() {
        let mut w = Window::new(MINUTE, 0);
        try_take(&mut w, 0, 5, 5);
        for t in 1..100 {
            assert!(matches!(
                try_take(&mut w, t * 1000, 5, 1),
                Verdict::Refused { .. }
            ));
        }
        assert_eq!(w.used(100_000), 5, "refused calls consumed nothing");
    }

    #[test]
    fn usage_drains_bucket_by_bucket() {
        let mut w = Window::new(MINUTE, 0);
        // One call per second for a minute.
        for s in 0..60 {
            w.take(s * SEC, 1);
        }
        assert_eq!(w.used(59 * SEC), 60);
        // 30 s later, the first 30 s (plus at most one bucket) have left.
        let used = w.used(90 * SEC);
        assert!((29..=30).contains(&used), "{used}");
        assert_eq!(w.used(121 * SEC), 0);
        // A long idle gap clears everything at once.
        w.take(122 * SEC, 3);
        assert_eq!(w.used(10_000 * SEC), 0);
    }

    /// The promise, checked against an exact log of admissions: over a long pseudo-random run
    /// with bursts, no window of length W holds more than the limit, and every refusal happens
    /// only when an ideal sliding log one bucket wider would also be at the limit.
    #[test]
    fn no_window_ever_admits_more_than_the_limit() {
        let limit = 50;
        let mut w = Window::new(MINUTE, 0);
        let mut admitted: Vec<u64> = vec![];
        let mut now = 0u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly tight bursts, sometimes long pauses.
            now += match seed % 10 {
                0 => seed % (30 * SEC),
                1..=3 => seed % SEC,
                _ => seed % 1_000,
            };
            let cost = 1 + seed % 3;
            let in_window =
                |admitted: &[u64], from: u64| admitted.iter().filter(|&&t| t > from).count() as u64;
            match try_take(&mut w, now, limit, cost) {
                Verdict::Fits => {
                    admitted.extend(std::iter::repeat_n(now, cost as usize));
                    assert!(
                        in_window(&admitted, now.saturating_sub(MINUTE)) <= limit,
                        "over the limit at {now}"
                    );
                }
                Verdict::Refused { retry_after_us } => {
                    let wide = now.saturating_sub(MINUTE + MINUTE / BUCKETS);
                    assert!(
                        in_window(&admitted, wide) + cost > limit,
                        "refused under the limit at {now}"
                    );
                    assert!(retry_after_us <= MINUTE + MINUTE / BUCKETS);
                }
            }
            admitted.retain(|&t| t + 2 * MINUTE > now);
            // The kept total is the buckets' sum, whatever happened.
            assert_eq!(
                w.used(now),
                w.counts.iter().map(|&c| u64::from(c)).sum::<u64>()
            );
        }
    }

    #[test]
    fn a_settled_reservation_counts_what_was_used_where_it_was_taken() {
        let mut w = Window::new(MINUTE, 0);
        // 800 reserved at 10 s, 100 at 20 s; at 30 s the first settles to 300.
        w.take(10 * SEC, 800);
        w.take(20 * SEC, 100);
        w.adjust(30 * SEC, 10 * SEC, 300 - 800);
        assert_eq!(w.used(30 * SEC), 400);
        assert_eq!(w.check(30 * SEC, 1_000, 600), Verdict::Fits);
        // The 300 leave the window with their bucket, at 70 s, not at 90 s.
        assert_eq!(w.used(70 * SEC + MINUTE / BUCKETS), 100);
        // More used than reserved is counted too, in the same bucket.
        w.adjust(71 * SEC, 20 * SEC, 50);
        assert_eq!(w.used(71 * SEC), 150);
        // A reservation whose bucket has left the window changes nothing.
        w.adjust(200 * SEC, 20 * SEC, 5_000);
        assert_eq!(w.used(200 * SEC), 0);
        // A give-back never drops a bucket below zero.
        w.take(201 * SEC, 10);
        w.adjust(201 * SEC, 201 * SEC, -50);
        assert_eq!(w.used(201 * SEC), 0);
    }

    #[test]
    fn tiny_windows_still_have_one_microsecond_buckets() {
        let mut w = Window::new(1, 0);
        assert_eq!(w.window_us(), BUCKETS);
        assert_eq!(try_take(&mut w, 0, 1, 1), Verdict::Fits);
        assert!(matches!(w.check(5, 1, 1), Verdict::Refused { .. }));
        assert_eq!(w.check(10 * BUCKETS, 1, 1), Verdict::Fits);
    }
}
