//! What a call may cost at most, for the reservation a budget takes before it: plain Rust over
//! pico-dollars (10^-12 USD), the unit in which prices with 6 decimals per million tokens are
//! whole numbers per token.

/// A model's prices in pico-dollars per token: its dearest input rate (plain, cached or cache
/// write: which the provider will bill is not known before the call) and its output rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub input: u64,
    pub output: u64,
}

/// The most a call can cost: every token of its bound but `max_tokens` billed as input at the
/// dearest rate, and `max_tokens` as output. Without a price a call is recorded at no cost,
/// and reserves none.
pub fn cost_bound(tokens: u64, max_tokens: u64, prices: Option<Prices>) -> u64 {
    let Some(prices) = prices else {
        return 0;
    };
    let input = tokens.saturating_sub(max_tokens);
    input
        .saturating_mul(prices.input)
        .saturating_add(max_tokens.min(tokens).saturating_mul(prices.output))
}

/// How many of `costs`, taken in order, fit in `room` together.
pub fn fitting(costs: &[u64], room: u64) -> usize {
    let mut total = 0u64;
    costs
        .iter()
        .take_while(|&&cost| match total.checked_add(cost) {
            Some(sum) if sum <= room => {
                total = sum;
                true
            }
            _ => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: Prices = Prices {
        input: 150_000,
        output: 600_000,
    };

    #[test]
    fn the_bound_bills_the_prompt_as_input_and_max_tokens_as_output() {
        // 700 tokens of bound, 200 of them max_tokens: 500 x $0.15 + 200 x $0.60 per million.
        assert_eq!(
            cost_bound(700, 200, Some(MINI)),
            500 * 150_000 + 200 * 600_000
        );
        assert_eq!(cost_bound(700, 200, None), 0);
        // A bound below max_tokens (a bound cut short) never bills more output than it has.
        assert_eq!(cost_bound(100, 200, Some(MINI)), 100 * 600_000);
        assert_eq!(cost_bound(u64::MAX, 1, Some(MINI)), u64::MAX);
    }

    #[test]
    fn calls_fit_in_order_until_one_does_not() {
        assert_eq!(fitting(&[3, 3, 3], 9), 3);
        assert_eq!(fitting(&[3, 3, 3], 8), 2);
        // In order: a cheaper call after one that does not fit waits its turn.
        assert_eq!(fitting(&[3, 9, 1], 8), 1);
        assert_eq!(fitting(&[], 0), 0);
        assert_eq!(fitting(&[0, 0], 0), 2);
        assert_eq!(fitting(&[u64::MAX, 1], u64::MAX), 1);
    }
}
