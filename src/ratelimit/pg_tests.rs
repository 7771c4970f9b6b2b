#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn allowed(sql: &str) -> bool {
        Spi::get_one::<bool>(&format!("SELECT allowed FROM {sql}"))
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn an_app_key_admits_its_maximum_then_refuses() {
        for _ in 0..3 {
            assert!(allowed("ai_agents.rate_limit('pg-test', 3, '1 minute')"));
        }
        assert!(!allowed("ai_agents.rate_limit('pg-test', 3, '1 minute')"));
        let retry = Spi::get_one::<f64>(
            "SELECT extract(epoch FROM retry_after)::float8 FROM ai_agents.rate_limit('pg-test', 3, '1 minute')",
        )
        .unwrap()
        .unwrap();
        assert!(retry > 59.0 && retry <= 60.5, "{retry}");
    }

    #[pg_test]
    fn peeking_at_the_tiers_takes_nothing() {
        let query = "ai_agents.peek_rate_limit(gen_random_uuid(), gen_random_uuid(), 50)";
        assert!(allowed(query));
        let remaining =
            Spi::get_one::<i64>(&format!("SELECT remaining_agent FROM {query}")).unwrap();
        assert_eq!(remaining, Some(0));
    }

    #[pg_test(error = "cost 51 exceeds the agent limit of 50 per minute")]
    fn a_cost_above_a_tier_limit_is_bad_input() {
        Spi::run(
            "SELECT * FROM ai_agents.check_rate_limit(gen_random_uuid(), gen_random_uuid(), 51)",
        )
        .unwrap();
    }
}
