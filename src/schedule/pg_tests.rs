#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn utc_text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(&format!("SELECT (({sql}) AT TIME ZONE 'UTC')::text")).unwrap()
    }

    #[pg_test]
    fn next_run_time_reads_the_schedule_in_its_time_zone() {
        // Daylight saving started on 2024-03-10: 09:00 in New York is 14:00 UTC before, 13:00 after.
        assert_eq!(
            utc_text(
                "ai_agents.next_run_time('0 9 * * *', 'America/New_York', '2024-03-09 12:00+00')"
            ),
            Some("2024-03-09 14:00:00".into())
        );
        assert_eq!(
            utc_text(
                "ai_agents.next_run_time('0 9 * * *', 'America/New_York', '2024-03-09 15:00+00')"
            ),
            Some("2024-03-10 13:00:00".into())
        );
        assert_eq!(
            utc_text("ai_agents.next_run_time('*/10 * * * *', 'UTC', '2024-05-01 12:00+00')"),
            Some("2024-05-01 12:10:00".into())
        );
    }

    #[pg_test]
    fn a_null_schedule_has_no_next_run() {
        let next = Spi::get_one::<TimestampWithTimeZone>(
            "SELECT ai_agents.next_run_time(NULL, 'UTC', now())",
        )
        .unwrap();
        assert_eq!(next, None);
    }

    #[pg_test(error = "invalid cron expression \"61 * * * *\": minute value 61 out of range 0-59")]
    fn an_invalid_cron_expression_is_refused() {
        Spi::run("SELECT ai_agents.validate_schedule('61 * * * *', 'UTC')").unwrap();
    }

    #[pg_test(error = "unknown time zone \"Mars/Olympus_Mons\"")]
    fn an_unknown_time_zone_is_refused() {
        Spi::run("SELECT ai_agents.validate_schedule(NULL, 'Mars/Olympus_Mons')").unwrap();
    }
}
