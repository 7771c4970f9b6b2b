//! Next period's spend from the spend of the periods before it.

/// A forecast and how it was made, in words a gym owner reads.
#[derive(Debug, PartialEq)]
pub struct Forecast {
    pub next_period_usd: f64,
    /// Periods the forecast rests on: those from the first with any spend on.
    pub periods_used: usize,
    pub method: String,
}

/// Fewer points than this make a straight line a guess: the mean is used instead.
const MIN_POINTS_FOR_TREND: usize = 3;

/// `spend` is per period, oldest first, the current period last. Periods before the first
/// spend are left out (the organization did not exist yet, or had no agents); with fewer than
/// three periods left the forecast is their mean, otherwise the least-squares straight line
/// through them, one period ahead, never below zero.
pub fn next_period(spend: &[f64], period: &str) -> Forecast {
    let used: &[f64] = match spend.iter().position(|&usd| usd > 0.0) {
        Some(first) => &spend[first..],
        None => &[],
    };
    let n = used.len();
    let plural = |count: usize| {
        if count == 1 {
            period.to_string()
        } else {
            format!("{period}s")
        }
    };
    if n == 0 {
        return Forecast {
            next_period_usd: 0.0,
            periods_used: 0,
            method: "no spend recorded yet, so none is expected".into(),
        };
    }
    if n < MIN_POINTS_FOR_TREND {
        let mean = used.iter().sum::<f64>() / n as f64;
        return Forecast {
            next_period_usd: round_usd(mean),
            periods_used: n,
            method: format!("the average of the last {n} {}", plural(n)),
        };
    }
    // x = 0, 1, ..., n-1; the line's value at x = n.
    let count = n as f64;
    let mean_x = (count - 1.0) / 2.0;
    let mean_y = used.iter().sum::<f64>() / count;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, &y) in used.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    let next = mean_y + slope * (count - mean_x);
    Forecast {
        next_period_usd: round_usd(next.max(0.0)),
        periods_used: n,
        method: format!(
            "a straight-line trend (least squares) through the spend of the last {n} {}",
            plural(n)
        ),
    }
}

fn round_usd(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straight_line_is_continued() {
        let f = next_period(&[0.0, 0.0, 10.0, 20.0, 30.0, 40.0], "month");
        assert_eq!(f.next_period_usd, 50.0);
        assert_eq!(f.periods_used, 4);
        assert!(f.method.contains("least squares") && f.method.contains("4 months"));
    }

    #[test]
    fn noisy_points_follow_the_least_squares_line() {
        // y = 1, 3, 2, 5: slope 1.1, intercept 1.1 (regr_slope / regr_intercept agree).
        let f = next_period(&[1.0, 3.0, 2.0, 5.0], "month");
        assert!(
            (f.next_period_usd - (1.1 + 1.1 * 4.0)).abs() < 1e-9,
            "{f:?}"
        );
    }

    #[test]
    fn a_falling_trend_stops_at_zero() {
        assert_eq!(
            next_period(&[30.0, 20.0, 10.0, 1.0], "week").next_period_usd,
            0.0
        );
    }

    #[test]
    fn few_points_give_their_mean() {
        let f = next_period(&[0.0, 0.0, 0.0, 0.0, 4.0, 6.0], "month");
        assert_eq!(f.next_period_usd, 5.0);
        assert_eq!(f.method, "the average of the last 2 months");
        assert_eq!(
            next_period(&[3.0], "week").method,
            "the average of the last 1 week"
        );
    }

    #[test]
    fn no_spend_forecasts_nothing() {
        let f = next_period(&[0.0; 6], "month");
        assert_eq!((f.next_period_usd, f.periods_used), (0.0, 0));
        assert_eq!(next_period(&[], "month").periods_used, 0);
    }
}
