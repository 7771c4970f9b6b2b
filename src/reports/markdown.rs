//! The Markdown a gym owner reads, rendered from a report's JSON data (built by
//! `ai_agents._report_data` in sql/reports.sql). Absent figures render as "n/a", never as a
//! failure: a report of an idle week is a valid report of zeros.
use serde_json::{Map, Value};
use std::fmt::Write;

/// How far the narrative got; the column `narrative_status` of ai_agent_reports.
pub enum Narrative<'a> {
    NotRequested,
    Pending,
    Written(&'a str),
    Missing(&'a str),
}

/// Rows of a template query shown in the Markdown; the data keeps them all.
const MAX_QUERY_ROWS: usize = 20;

pub fn render(data: &Value, narrative: Narrative) -> String {
    let mut out = String::new();
    let period = &data["period"];
    let _ = writeln!(out, "# {}\n", text(&data["title"]));
    let mut about = format!(
        "{} to {} ({})",
        text(&period["first_day"]),
        text(&period["last_day"]),
        text(&period["timezone"])
    );
    if let Some(name) = data["agent"]["name"].as_str() {
        let _ = write!(about, " · agent: {name}");
    }
    if data["scope"] == "organization" {
        about.push_str(" · figures of all the organization's agents");
    }
    let _ = writeln!(out, "{about}\n");
    match narrative {
        Narrative::NotRequested => {}
        Narrative::Pending => section(
            &mut out,
            "Summary",
            "_The agent is writing the summary; it appears here when it is ready._",
        ),
        Narrative::Written(summary) => section(&mut out, "Summary", summary.trim()),
        Narrative::Missing(why) => section(
            &mut out,
            "Summary",
            &format!("_No written summary: {why}. The figures below are complete._"),
        ),
    }
    let kind = data["period"]["kind"].as_str().unwrap_or("period");
    for name in data["sections"].as_array().into_iter().flatten() {
        match name.as_str().unwrap_or_default() {
            "tasks_by_status" => tasks_by_status(&mut out, &data["tasks_by_status"]),
            "conversations" => conversations(&mut out, &data["conversations"]),
            "success_rate" => success_rate(&mut out, &data["summary"]),
            "latency" => latency(&mut out, &data["summary"]),
            "failures" => failures(&mut out, &data["failures"]),
            "usage" => usage(&mut out, &data["usage"]),
            "per_agent" => per_agent(&mut out, &data["per_agent"]),
            "per_model" => per_model(&mut out, &data["per_model"]),
            "previous_period" => previous_period(&mut out, data, kind),
            "trend" => trend(&mut out, &data["trend"], kind),
            "forecast" => forecast(&mut out, &data["forecast"], kind),
            "budget" => budget(&mut out, &data["budget"], kind),
            _ => {}
        }
    }
    if let Some(queries) = data["queries"].as_object() {
        for (name, rows) in queries {
            query_rows(&mut out, name, rows);
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn section(out: &mut String, heading: &str, body: &str) {
    let _ = writeln!(out, "## {heading}\n\n{body}\n");
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let _ = writeln!(
        out,
        "| {} |",
        header
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f.round() as i64))
}

/// 12345 -> "12,345".
fn count(v: &Value) -> String {
    let Some(n) = int(v) else {
        return "n/a".into();
    };
    let digits = n.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(d);
    }
    if n < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// Cents for amounts a person budgets with, more decimals for the small ones LLM calls cost.
fn usd(v: &Value) -> String {
    match v.as_f64() {
        None => "n/a".into(),
        Some(x) if x != 0.0 && x.abs() < 0.01 => format!("${x:.6}"),
        Some(x) if x != 0.0 && x.abs() < 1.0 => format!("${x:.4}"),
        Some(x) => format!("${x:.2}"),
    }
}

/// "1 task", "2 tasks", "1 reply", "2 replies".
fn counted(v: &Value, noun: &str) -> String {
    let noun = match (int(v), noun.strip_suffix('y')) {
        (Some(1), _) => noun.to_string(),
        (_, Some(stem)) => format!("{stem}ies"),
        _ => format!("{noun}s"),
    };
    format!("{} {noun}", count(v))
}

fn percent(rate: &Value) -> String {
    rate.as_f64()
        .map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(v: &Value) -> String {
    if v.is_null() {
        "n/a".into()
    } else {
        format!("{} ms", count(v))
    }
}

/// "+12.5%" from `before` to `now`; "n/a" when there was nothing before.
fn change(now: &Value, before: &Value) -> String {
    match (now.as_f64(), before.as_f64()) {
        (Some(n), Some(b)) if b != 0.0 => format!("{:+.1}%", (n - b) / b * 100.0),
        (Some(0.0), Some(_)) => "no change".into(),
        _ => "n/a".into(),
    }
}

fn tasks_by_status(out: &mut String, by_status: &Value) {
    let Some(map) = by_status.as_object() else {
        return;
    };
    let order = [
        "completed",
        "failed",
        "cancelled",
        "running",
        "queued",
        "pending",
    ];
    let rows: Vec<Vec<String>> = order
        .iter()
        .filter(|s| int(&by_status[**s]).unwrap_or(0) > 0)
        .map(|s| vec![(*s).to_string(), count(&by_status[*s])])
        .collect();
    if rows.is_empty() {
        section(out, "Tasks", "No tasks were created in this period.");
        return;
    }
    let total: i64 = map.values().filter_map(int).sum();
    let _ = writeln!(
        out,
        "## Tasks\n\n{} created in this period; where they stand now:\n",
        counted(&total.into(), "task")
    );
    table(out, &["Status", "Tasks"], &rows);
}

fn conversations(out: &mut String, c: &Value) {
    section(
        out,
        "Conversations",
        &format!(
            "{}: {} from members, {} from the agent.",
            counted(&c["conversations"], "conversation"),
            counted(&c["user_messages"], "message"),
            counted(&c["assistant_messages"], "reply"),
        ),
    );
}

fn success_rate(out: &mut String, s: &Value) {
    let succeeded = int(&s["succeeded"]).unwrap_or(0);
    let given_up = int(&s["given_up"]).unwrap_or(0);
    let body = if succeeded + given_up == 0 {
        "No task run ended in this period.".to_string()
    } else {
        format!(
            "{} of the {} that ended succeeded ({} succeeded, {} failed after their last attempt). \
             Tasks worked on: {}; failed attempts that were retried: {}.",
            percent(&s["success_rate"]),
            counted(&(succeeded + given_up).into(), "run"),
            count(&s["succeeded"]),
            count(&s["given_up"]),
            count(&s["tasks_handled"]),
            count(&s["retried"]),
        )
    };
    section(out, "Success rate", &body);
}

fn latency(out: &mut String, s: &Value) {
    let body = if int(&s["latency_samples"]).unwrap_or(0) == 0 {
        "No successful calls to measure.".to_string()
    } else {
        format!(
            "Half of the successful calls took under {}, 95% under {} ({}).",
            ms(&s["latency_p50_ms"]),
            ms(&s["latency_p95_ms"]),
            counted(&s["latency_samples"], "call")
        )
    };
    section(out, "Response time", &body);
}

fn failures(out: &mut String, f: &Value) {
    let rows: Vec<Vec<String>> = f
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![text(&e["error"]), count(&e["count"])])
        .collect();
    if rows.is_empty() {
        section(out, "Failures", "No failed attempts.");
    } else {
        out.push_str("## Failures\n\nThe most common errors:\n\n");
        table(out, &["Error", "Times"], &rows);
    }
}

fn usage(out: &mut String, u: &Value) {
    section(
        out,
        "Tokens and cost",
        &format!(
            "{} in {}, costing {}.",
            counted(&u["tokens"], "token"),
            counted(&u["attempts"], "LLM call"),
            usd(&u["cost_usd"])
        ),
    );
}

fn per_agent(out: &mut String, agents: &Value) {
    let rows: Vec<Vec<String>> = agents
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                text(&a["name"]),
                count(&a["attempts"]),
                count(&a["succeeded"]),
                count(&a["tokens"]),
                usd(&a["cost_usd"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        section(out, "By agent", "No agent called the LLM in this period.");
    } else {
        out.push_str("## By agent\n\n");
        table(
            out,
            &["Agent", "Calls", "Succeeded", "Tokens", "Cost"],
            &rows,
        );
    }
}

fn per_model(out: &mut String, models: &Value) {
    let rows: Vec<Vec<String>> = models
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                format!("{} {}", text(&m["provider"]), text(&m["model"])),
                count(&m["attempts"]),
                count(&m["tokens"]),
                usd(&m["cost_usd"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        section(out, "By model", "No model was called in this period.");
    } else {
        out.push_str("## By model\n\n");
        table(out, &["Model", "Calls", "Tokens", "Cost"], &rows);
    }
}

fn previous_period(out: &mut String, data: &Value, kind: &str) {
    let (now, before) = (&data["summary"], &data["previous_period"]["summary"]);
    let (now_usage, before_usage) = (&data["usage"], &data["previous_period"]["usage"]);
    let finished = |s: &Value| {
        Value::from(int(&s["succeeded"]).unwrap_or(0) + int(&s["given_up"]).unwrap_or(0))
    };
    let points = match (
        now["success_rate"].as_f64(),
        before["success_rate"].as_f64(),
    ) {
        (Some(n), Some(b)) => format!("{:+.1} points", (n - b) * 100.0),
        _ => "n/a".into(),
    };
    let rows = vec![
        vec![
            "Runs ended".into(),
            count(&finished(now)),
            count(&finished(before)),
            change(&finished(now), &finished(before)),
        ],
        vec![
            "Success rate".into(),
            percent(&now["success_rate"]),
            percent(&before["success_rate"]),
            points,
        ],
        vec![
            "Median response time".into(),
            ms(&now["latency_p50_ms"]),
            ms(&before["latency_p50_ms"]),
            change(&now["latency_p50_ms"], &before["latency_p50_ms"]),
        ],
        vec![
            "Tokens".into(),
            count(&now_usage["tokens"]),
            count(&before_usage["tokens"]),
            change(&now_usage["tokens"], &before_usage["tokens"]),
        ],
        vec![
            "Cost".into(),
            usd(&now_usage["cost_usd"]),
            usd(&before_usage["cost_usd"]),
            change(&now_usage["cost_usd"], &before_usage["cost_usd"]),
        ],
    ];
    let _ = writeln!(out, "## Compared with the previous {kind}\n");
    let this = format!("This {kind}");
    let previous = format!("Previous {kind}");
    table(out, &["", &this, &previous, "Change"], &rows);
}

fn trend(out: &mut String, points: &Value, kind: &str) {
    let rows: Vec<Vec<String>> = points
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                text(&p["label"]),
                count(&p["attempts"]),
                count(&p["tokens"]),
                usd(&p["cost_usd"]),
            ]
        })
        .collect();
    let heading = if kind == "month" { "Month" } else { "Week" };
    out.push_str("## Spend over time\n\n");
    table(out, &[heading, "Calls", "Tokens", "Cost"], &rows);
}

fn forecast(out: &mut String, f: &Value, kind: &str) {
    let mut body = format!(
        "Next {kind}: about {}. How: {}.",
        usd(&f["next_period_usd"]),
        text(&f["method"])
    );
    let now = &f["budget"];
    if let (Some(spent), Some(share)) = (now["spent_usd"].as_f64(), now["share"].as_f64()) {
        let _ = write!(
            body,
            " This {kind}: {} of the budget's {} ({:.1}%).",
            usd(&Value::from(spent)),
            usd(&now["allowance_usd"]),
            share * 100.0
        );
    }
    if let (Some(expected), Some(allowed)) =
        (f["next_period_usd"].as_f64(), f["budget_usd"].as_f64())
    {
        let verdict = if expected <= allowed {
            "within it".to_string()
        } else {
            format!("over it by {}", usd(&Value::from(expected - allowed)))
        };
        let _ = write!(
            body,
            " The budget allows {} next {kind}: the forecast is {verdict}.",
            usd(&f["budget_usd"])
        );
    }
    section(out, "Forecast", &body);
}

fn budget(out: &mut String, budgets: &Value, kind: &str) {
    let rows: Vec<Vec<String>> = budgets
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let whose = match b["name"].as_str() {
                Some(name) => name.to_string(),
                None if b["agent_id"].is_null() => "Organization".to_string(),
                None => "(deleted agent)".to_string(),
            };
            let share = b["share"]
                .as_f64()
                .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0));
            vec![
                whose,
                format!("{} a {}", usd(&b["limit_usd"]), text(&b["period"])),
                usd(&b["allowance_usd"]),
                usd(&b["spent_usd"]),
                share,
            ]
        })
        .collect();
    if rows.is_empty() {
        section(out, "Budget", "No budget is set.");
    } else {
        out.push_str("## Budget\n\n");
        table(
            out,
            &[
                "Budget",
                "Limit",
                &format!("For this {kind}"),
                "Spent",
                "Used",
            ],
            &rows,
        );
    }
}

fn query_rows(out: &mut String, name: &str, rows: &Value) {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(Value::Object(first)) = rows.first() else {
        section(out, name, "No rows.");
        return;
    };
    let columns: Vec<&str> = first.keys().map(String::as_str).collect();
    let empty = Map::new();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .take(MAX_QUERY_ROWS)
        .map(|row| {
            let row = row.as_object().unwrap_or(&empty);
            columns
                .iter()
                .map(|c| text(row.get(*c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let _ = writeln!(out, "## {name}\n");
    table(out, &columns, &cells);
    if rows.len() > MAX_QUERY_ROWS {
        let _ = writeln!(
            out,
            "_{} more rows are in the report's data._\n",
            rows.len() - MAX_QUERY_ROWS
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "title": "Customer Care Weekly Summary - week of 2026-11-16",
            "scope": "agent",
            "agent": {"name": "Front desk"},
            "sections": ["tasks_by_status", "success_rate", "latency", "failures", "usage", "previous_period"],
            "period": {"kind": "week", "first_day": "2026-11-16", "last_day": "2026-11-22", "timezone": "Europe/Berlin"},
            "tasks_by_status": {"pending": 0, "queued": 0, "running": 0, "completed": 9, "failed": 1, "cancelled": 0},
            "summary": {"succeeded": 9, "given_up": 1, "retried": 2, "tasks_handled": 10, "success_rate": 0.9,
                        "latency_samples": 9, "latency_p50_ms": 420.0, "latency_p95_ms": 1250.5},
            "failures": [{"error": "upstream 503 | busy", "count": 3}],
            "usage": {"attempts": 12, "tokens": 12345, "cost_usd": 0.0123},
            "previous_period": {"summary": {"succeeded": 4, "given_up": 0, "success_rate": 1.0, "latency_p50_ms": 400},
                                "usage": {"tokens": 10000, "cost_usd": 0.01}}
        })
    }

    #[test]
    fn a_week_reads_as_sentences_and_tables() {
        let md = render(&data(), Narrative::Written("A good week.\n"));
        assert!(md.starts_with("# Customer Care Weekly Summary - week of 2026-11-16\n\n2026-11-16 to 2026-11-22 (Europe/Berlin) · agent: Front desk\n\n## Summary\n\nA good week.\n"), "{md}");
        assert!(md.contains("| completed | 9 |\n| failed | 1 |"), "{md}");
        assert!(md.contains("90.0% of the 10 runs that ended succeeded (9 succeeded, 1 failed after their last attempt). Tasks worked on: 10; failed attempts that were retried: 2."), "{md}");
        assert!(
            md.contains("under 420 ms, 95% under 1,251 ms (9 calls)"),
            "{md}"
        );
        assert!(md.contains("| upstream 503 \\| busy | 3 |"), "{md}");
        assert!(
            md.contains("12,345 tokens in 12 LLM calls, costing $0.0123."),
            "{md}"
        );
        assert!(md.contains("| Runs ended | 10 | 4 | +150.0% |"), "{md}");
        assert!(
            md.contains("| Success rate | 90.0% | 100.0% | -10.0 points |"),
            "{md}"
        );
        assert!(md.ends_with("|\n") && !md.ends_with("\n\n"));
    }

    #[test]
    fn budgets_and_the_forecast_read_against_each_other() {
        let month = json!({
            "title": "Finance Monthly Forecast - November 2026", "scope": "organization",
            "sections": ["forecast", "budget"],
            "period": {"kind": "month", "first_day": "2026-11-01", "last_day": "2026-11-30", "timezone": "UTC"},
            "forecast": {"next_period_usd": 62.5, "method": "the average of the last 2 months", "budget_usd": 50,
                         "budget": {"allowance_usd": 50, "spent_usd": 41.25, "share": 0.825}},
            "budget": [
                {"agent_id": null, "name": null, "period": "month", "limit_usd": 50, "allowance_usd": 50,
                 "spent_usd": 41.25, "share": 0.825},
                {"agent_id": "a", "name": "Front desk", "period": "day", "limit_usd": 1, "allowance_usd": 30,
                 "spent_usd": 0, "share": 0}
            ]
        });
        let md = render(&month, Narrative::Written("x"));
        for expected in [
            "Next month: about $62.50. How: the average of the last 2 months. This month: $41.25 of the budget's $50.00 (82.5%). The budget allows $50.00 next month: the forecast is over it by $12.50.",
            "| Budget | Limit | For this month | Spent | Used |",
            "| Organization | $50.00 a month | $50.00 | $41.25 | 82.5% |",
            "| Front desk | $1.00 a day | $30.00 | $0.00 | 0.0% |",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
        let within = json!({
            "title": "T", "scope": "organization", "sections": ["forecast", "budget"],
            "period": {"kind": "month", "first_day": "2026-11-01", "last_day": "2026-11-30", "timezone": "UTC"},
            "forecast": {"next_period_usd": 10, "method": "m", "budget_usd": 50}, "budget": []
        });
        let md = render(&within, Narrative::Written("x"));
        assert!(md.contains("the forecast is within it."), "{md}");
        assert!(md.contains("No budget is set."), "{md}");
    }

    #[test]
    fn an_idle_period_renders_zeros_not_errors() {
        let idle = json!({
            "title": "T", "scope": "organization",
            "sections": ["tasks_by_status", "success_rate", "latency", "failures", "usage", "per_agent", "per_model", "trend", "forecast"],
            "period": {"kind": "month", "first_day": "2026-10-01", "last_day": "2026-10-31", "timezone": "UTC"},
            "tasks_by_status": {"pending": 0, "completed": 0},
            "summary": {"succeeded": 0, "given_up": 0, "success_rate": null, "latency_samples": 0, "latency_p50_ms": null},
            "failures": [], "usage": {"attempts": 0, "tokens": 0, "cost_usd": 0},
            "per_agent": [], "per_model": [],
            "trend": [{"label": "October 2026", "attempts": 0, "tokens": 0, "cost_usd": 0}],
            "forecast": {"next_period_usd": 0, "method": "no spend recorded yet, so none is expected"}
        });
        let md = render(&idle, Narrative::Missing("the LLM call failed: 503"));
        for expected in [
            "figures of all the organization's agents",
            "_No written summary: the LLM call failed: 503. The figures below are complete._",
            "No tasks were created in this period.",
            "No task run ended in this period.",
            "No successful calls to measure.",
            "No failed attempts.",
            "0 tokens in 0 LLM calls, costing $0.00.",
            "No agent called the LLM",
            "| October 2026 | 0 | 0 | $0.00 |",
            "Next month: about $0.00. How: no spend recorded yet",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
    }

    #[test]
    fn query_rows_become_a_capped_table() {
        let rows: Vec<Value> = (0..25)
            .map(|i| json!({"member": i, "visits": null}))
            .collect();
        let mut with_query = data();
        with_query["sections"] = json!([]);
        with_query["queries"] = json!({"busiest members": rows, "empty": []});
        let md = render(&with_query, Narrative::Pending);
        assert!(md.contains("_The agent is writing the summary"));
        assert!(
            md.contains("## busiest members\n\n| member | visits |\n|---|---|\n| 0 | n/a |"),
            "{md}"
        );
        assert!(md.contains("_5 more rows are in the report's data._"));
        assert!(md.contains("## empty\n\nNo rows."));
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(count(&json!(1234567)), "1,234,567");
        assert_eq!(count(&json!(-1000)), "-1,000");
        assert_eq!(count(&json!(999)), "999");
        assert_eq!(usd(&json!(12.345)), "$12.35");
        assert_eq!(usd(&json!(0.00042)), "$0.000420");
        assert_eq!(usd(&json!(0.0123)), "$0.0123");
        assert_eq!(change(&json!(5), &json!(0)), "n/a");
        assert_eq!(change(&json!(0), &json!(0)), "no change");
    }
}
