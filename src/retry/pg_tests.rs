#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn seconds(sql: &str) -> f64 {
        Spi::get_one::<f64>(&format!("SELECT extract(epoch FROM {sql})::float8"))
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn retry_delay_follows_the_settings() {
        Spi::run("SET ai_agents.retry_base_delay = '2s'").unwrap();
        Spi::run("SET ai_agents.retry_max_delay = '1min'").unwrap();
        assert_eq!(seconds("ai_agents.retry_delay(1, NULL, 1.0)"), 2.0);
        assert_eq!(seconds("ai_agents.retry_delay(3, NULL, 1.0)"), 8.0);
        assert_eq!(seconds("ai_agents.retry_delay(30, NULL, 1.0)"), 60.0);
        assert_eq!(
            seconds("ai_agents.retry_delay(1, interval '90 seconds', 0.0)"),
            90.0
        );
        let drawn = seconds("ai_agents.retry_delay(2)");
        assert!((2.0..=4.0).contains(&drawn), "{drawn}");
    }

    #[pg_test(error = "attempt must not be negative, got -1")]
    fn retry_delay_refuses_negative_attempts() {
        Spi::run("SELECT ai_agents.retry_delay(-1)").unwrap();
    }

    #[pg_test]
    fn http_statuses_are_classified_in_sql() {
        let verdicts = Spi::get_one::<String>(
            "SELECT string_agg(ai_agents.failure_is_transient(s, NULL)::text, ',' ORDER BY o) \
             FROM unnest(ARRAY[429, 503, 529, 400, 401, NULL, 101, 302]::int[]) WITH ORDINALITY AS u(s, o)",
        )
        .unwrap();
        // 1xx and 3xx as the worker classifies them (before 0.2.0, fail_task retried them).
        assert_eq!(
            verdicts.as_deref(),
            Some("true,true,true,false,false,true,false,false")
        );
    }
}
