//! Reports built from tasks and activity (docs/reports.md). The figures are computed in
//! sql/idempotent/reports.sql; rendering them for people and forecasting spend are plain Rust,
//! and `query` checks a template's own queries with PostgreSQL's parser.
mod forecast;
mod markdown;
mod query;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

/// The Markdown of a report from its data and the state of its narrative.
#[pg_extern(immutable, parallel_safe, name = "_render_report_markdown")]
fn render_report_markdown(
    data: JsonB,
    narrative: Option<&str>,
    narrative_status: &str,
    narrative_error: Option<&str>,
) -> String {
    let narrative = match (narrative_status, narrative) {
        ("written", Some(text)) => markdown::Narrative::Written(text),
        ("pending", _) => markdown::Narrative::Pending,
        ("missing", _) | ("written", None) => {
            markdown::Narrative::Missing(narrative_error.unwrap_or("no reason recorded"))
        }
        _ => markdown::Narrative::NotRequested,
    };
    markdown::render(&data.0, narrative)
}

/// Next period's spend from per-period spend, oldest first; see `forecast::next_period`.
#[pg_extern(immutable, parallel_safe, name = "_forecast_spend")]
fn forecast_spend(spend: Vec<Option<f64>>, period: default!(&str, "'month'")) -> JsonB {
    let spend: Vec<f64> = spend.into_iter().map(|usd| usd.unwrap_or(0.0)).collect();
    let f = forecast::next_period(&spend, period);
    JsonB(json!({
        "next_period_usd": f.next_period_usd,
        "periods_used": f.periods_used,
        "method": f.method,
    }))
}
