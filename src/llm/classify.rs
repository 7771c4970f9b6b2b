//! Turning an HTTP response (status, headers, body) into a [`Reply`] or a [`Failure`]: plain
//! functions, no I/O.
//!
//! * 2xx: the provider's reply is parsed; anything unusable (not UTF-8, NUL bytes, not JSON,
//!   truncated, an error object, wrong types, no content, over 10 MB) is a transient failure
//!   "malformed response from <provider>: ..." with the 2xx status - a retry may well succeed.
//! * 429: transient, unless the body says the quota, billing or credit is exhausted.
//! * 408, 409, 425 and every 5xx (including Anthropic's 529 overloaded): transient.
//! * Any other 4xx, and unexpected 1xx/3xx (redirects are not followed): permanent.
use std::time::Duration;

use serde_json::Value;

use super::reply::{json_kind, truncate_chars, ParseReply};
use super::status::is_transient;
use super::{Failure, Provider, Reply, MAX_BODY_BYTES};

/// Response headers as (lower-case name, value) pairs; values that are not visible ASCII
/// are left out by the transport.
pub(super) type Headers = [(String, String)];

/// Longest excerpt of a provider's error message kept in a [`Failure`] message.
const DETAIL_CHARS: usize = 500;

/// Longest excerpt of an unparseable 2xx body quoted in a "malformed response" message.
const SNIPPET_CHARS: usize = 200;

/// Retry-After values beyond this are clamped: a day is already "much later".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The whole interpretation of a response. `truncated` means the body was longer than
/// [`MAX_BODY_BYTES`] and `body` holds only its beginning.
pub(super) fn interpret(
    provider: Provider,
    parse_reply: ParseReply,
    requested_model: &str,
    status: u16,
    headers: &Headers,
    body: &[u8],
    truncated: bool,
) -> Result<Reply, Failure> {
    let request_id = request_id(provider, headers);
    if !(200..300).contains(&status) {
        return Err(status_failure(provider, status, headers, body, request_id));
    }
    let malformed = |problem: String| Failure {
        message: format!("malformed response from {provider}: {problem}"),
        http_status: Some(status),
        retry_after: None,
        permanent: false,
        request_id: request_id.clone(),
    };
    if truncated {
        return Err(malformed(format!(
            "the body is larger than {} MB",
            MAX_BODY_BYTES / (1024 * 1024)
        )));
    }
    let value = decode_json(body).map_err(&malformed)?;
    let parsed = parse_reply(&value).map_err(&malformed)?;
    if parsed.content.contains('\0') {
        return Err(malformed(
            "the reply text contains a NUL character (\\u0000), which PostgreSQL text cannot store"
                .to_string(),
        ));
    }
    if parsed.model.as_deref().is_some_and(|m| m.contains('\0')) {
        return Err(malformed(
            "\"model\" contains a NUL character (\\u0000)".to_string(),
        ));
    }
    if let Some(call) = parsed.tool_calls.iter().find(|call| {
        [&call.id, &call.name, &call.arguments]
            .iter()
            .any(|text| text.contains('\0'))
    }) {
        return Err(malformed(format!(
            "the tool call {:?} contains a NUL character (\\u0000), which PostgreSQL text \
             cannot store",
            truncate_chars(&call.name, 64)
        )));
    }
    Ok(Reply {
        content: parsed.content,
        input_tokens: parsed.input_tokens,
        cached_input_tokens: parsed.cached_input_tokens,
        cache_write_tokens: parsed.cache_write_tokens,
        output_tokens: parsed.output_tokens,
        model: parsed
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| requested_model.to_string()),
        request_id,
        tool_calls: parsed.tool_calls,
    })
}

/// The failure for a non-2xx status.
pub(super) fn status_failure(
    provider: Provider,
    status: u16,
    headers: &Headers,
    body: &[u8],
    request_id: Option<String>,
) -> Failure {
    let detail = error_detail(body);
    let quota_exhausted = status == 429 && detail.says_quota_exhausted();
    let permanent = !is_transient(Some(i32::from(status)), quota_exhausted.then_some(true));

    let mut message = format!("{provider} returned HTTP {status}");
    if let Some(reason) = reason_phrase(status) {
        message.push(' ');
        message.push_str(reason);
    }
    let hint = if quota_exhausted {
        Some("quota or credit exhausted; not retrying".to_string())
    } else {
        match status {
            300..=399 => Some(match header(headers, "location") {
                Some(location) => format!(
                    "unexpected redirect to {}; check base_url",
                    truncate_chars(location, DETAIL_CHARS)
                ),
                None => "unexpected redirect; check base_url".to_string(),
            }),
            401 => Some("check the api key".to_string()),
            404 => Some("check base_url and model".to_string()),
            _ => None,
        }
    };
    if let Some(hint) = hint {
        message.push_str(&format!(" ({hint})"));
    }
    let tags: Vec<&str> = [detail.kind.as_deref(), detail.code.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !tags.is_empty() {
        let mut tags = tags;
        tags.dedup();
        message.push_str(&format!(" [{}]", tags.join("/")));
    }
    message.push_str(": ");
    message.push_str(&detail.message);

    Failure {
        message,
        http_status: Some(status),
        retry_after: retry_after(headers),
        permanent,
        request_id,
    }
}

fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => return None,
    })
}

/// The error a provider (or a proxy in front of it) put in a non-2xx body.
#[derive(Debug, PartialEq)]
pub(super) struct ErrorDetail {
    /// Human-readable, whitespace collapsed, at most [`DETAIL_CHARS`] characters.
    pub message: String,
    /// `error.type` (OpenAI "insufficient_quota", Anthropic "overloaded_error", ...).
    pub kind: Option<String>,
    /// `error.code` (OpenAI "invalid_api_key", "insufficient_quota", ...).
    pub code: Option<String>,
}

impl ErrorDetail {
    fn says_quota_exhausted(&self) -> bool {
        let tagged = [&self.kind, &self.code]
            .into_iter()
            .flatten()
            .any(|tag| tag.eq_ignore_ascii_case("insufficient_quota"));
        let message = self.message.to_ascii_lowercase();
        tagged
            || ["quota", "billing", "credit balance"]
                .iter()
                .any(|word| message.contains(word))
    }
}

/// Understands OpenAI and Anthropic (`{"error": {"message", "type", "code"}}`), the
/// `{"error": "..."}` of Ollama, the `{"detail": ...}` of FastAPI servers, `{"message": ...}`,
/// and falls back on the body's text (an HTML page from a proxy, say).
pub(super) fn error_detail(body: &[u8]) -> ErrorDetail {
    let mut detail = ErrorDetail {
        message: String::new(),
        kind: None,
        code: None,
    };
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(value) => {
            let error = value.get("error").filter(|e| !e.is_null());
            match error {
                Some(Value::Object(error)) => {
                    detail.kind = error.get("type").and_then(tag);
                    detail.code = error.get("code").and_then(tag);
                    match error.get("message") {
                        Some(Value::String(message)) => message.clone(),
                        _ => Value::Object(error.clone()).to_string(),
                    }
                }
                Some(Value::String(message)) => message.clone(),
                Some(other) => other.to_string(),
                None => match value.get("message").or_else(|| value.get("detail")) {
                    Some(Value::String(message)) => message.clone(),
                    Some(other) if !other.is_null() => other.to_string(),
                    _ => value.to_string(),
                },
            }
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = collapse_whitespace(&text);
    detail.message = if text.is_empty() {
        "(empty body)".to_string()
    } else {
        truncate_chars(&text, DETAIL_CHARS)
    };
    detail
}

/// A type or code tag: a short string, or a number (some servers use numeric codes).
fn tag(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(truncate_chars(s.trim(), 80)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The body of a 2xx response as a JSON object, or why it is not one.
pub(super) fn decode_json(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".to_string());
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "the body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    if let Some(offset) = text.find('\0') {
        return Err(format!("the body contains a NUL byte at offset {offset}"));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let what = if e.is_eof() {
            "the body is truncated JSON"
        } else {
            "the body is not valid JSON"
        };
        format!(
            "{what} ({e}): {}",
            truncate_chars(&collapse_whitespace(text), SNIPPET_CHARS)
        )
    })?;
    let object = match value {
        Value::Object(object) => object,
        other => return Err(format!("expected a JSON object, got {}", json_kind(&other))),
    };
    let is_error_type = object.get("type").and_then(Value::as_str) == Some("error");
    if is_error_type || object.get("error").is_some_and(|e| !e.is_null()) {
        let detail = error_detail(body);
        return Err(format!("the body is an error object: {}", detail.message));
    }
    Ok(object)
}

/// A header's value, names compared case-insensitively, surrounding whitespace trimmed.
pub(super) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// OpenAI sends `x-request-id`, Anthropic `request-id`; the other name is tried second, for
/// gateways that use it.
pub(super) fn request_id(provider: Provider, headers: &Headers) -> Option<String> {
    let names = match provider {
        Provider::OpenAi => ["x-request-id", "request-id"],
        Provider::Anthropic => ["request-id", "x-request-id"],
    };
    names
        .iter()
        .find_map(|name| header(headers, name))
        .filter(|id| !id.is_empty())
        .map(|id| truncate_chars(id, 200))
}

/// `retry-after-ms` (milliseconds, sent by some OpenAI-compatible servers) or `Retry-After`
/// in delta-seconds (a decimal fraction is accepted). An HTTP-date, a negative or otherwise
/// unreadable value gives `None`. Clamped to one day.
pub(super) fn retry_after(headers: &Headers) -> Option<Duration> {
    header(headers, "retry-after-ms")
        .and_then(|v| parse_delay(v, 0.001))
        .or_else(|| header(headers, "retry-after").and_then(|v| parse_delay(v, 1.0)))
}

fn parse_delay(value: &str, seconds_per_unit: f64) -> Option<Duration> {
    let value = value.trim();
    let well_formed = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.bytes().filter(|&b| b == b'.').count() <= 1
        && value.bytes().any(|b| b.is_ascii_digit());
    if !well_formed {
        return None;
    }
    let seconds = value.parse::<f64>().ok()? * seconds_per_unit;
    let seconds = seconds.min(MAX_RETRY_AFTER.as_secs_f64());
    Duration::try_from_secs_f64(seconds).ok()
}

/// Replaces every occurrence of the api key in a failure (a provider or proxy may echo it).
/// Keys shorter than 4 characters are not searched for: they would mangle the message.
pub(super) fn redact(mut failure: Failure, api_key: &str) -> Failure {
    if api_key.len() >= 4 {
        failure.message = failure.message.replace(api_key, "<redacted>");
        failure.request_id = failure
            .request_id
            .map(|id| id.replace(api_key, "<redacted>"));
    }
    failure
}

/// Whether `body` contains the api key (keys shorter than 4 characters are never searched
/// for, see [`redact`]).
pub(super) fn contains_secret(body: &[u8], api_key: &str) -> bool {
    let key = api_key.as_bytes();
    key.len() >= 4 && body.windows(key.len()).any(|w| w == key)
}

/// `body` with every occurrence of the api key replaced by `<redacted>`.
pub(super) fn redact_bytes(body: &[u8], api_key: &str) -> Vec<u8> {
    let key = api_key.as_bytes();
    if key.len() < 4 {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        if rest.starts_with(key) {
            out.extend_from_slice(b"<redacted>");
            rest = &rest[key.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "30s", "500ms", "1500ms".
pub(super) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `interpret` with the parser `call` chooses for the provider.
    fn interpret(
        provider: Provider,
        requested_model: &str,
        status: u16,
        headers: &Headers,
        body: &[u8],
        truncated: bool,
    ) -> Result<Reply, Failure> {
        super::interpret(
            provider,
            provider.protocol().parse_reply,
            requested_model,
            status,
            headers,
            body,
            truncated,
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn fail(provider: Provider, status: u16, hdrs: &[(&str, &str)], body: &str) -> Failure {
        interpret(
            provider,
            "m",
            status,
            &headers(hdrs),
            body.as_bytes(),
            false,
        )
        .unwrap_err()
    }

    const OK_OPENAI: &str = r#"{"id":"c1","model":"gpt-4o-2024","choices":[{"index":0,
        "message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

    #[test]
    fn openai_success_is_interpreted() {
        let hdrs = headers(&[("x-request-id", "req_123")]);
        let reply = interpret(
            Provider::OpenAi,
            "gpt-4o",
            200,
            &hdrs,
            OK_OPENAI.as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply {
                content: "Hello".into(),
                input_tokens: 12,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 3,
                model: "gpt-4o-2024".into(),
                request_id: Some("req_123".into()),
                tool_calls: vec![],
            }
        );
    }

    #[test]
    fn model_falls_back_to_the_requested_one() {
        let body = r#"{"choices":[{"message":{"content":"x"}}]}"#;
        let reply =
            interpret(Provider::OpenAi, "llama3", 200, &[], body.as_bytes(), false).unwrap();
        assert_eq!(reply.model, "llama3");
        assert_eq!((reply.input_tokens, reply.output_tokens), (0, 0));
        let body = r#"{"model":"","choices":[{"message":{"content":"x"}}]}"#;
        let reply =
            interpret(Provider::OpenAi, "llama3", 200, &[], body.as_bytes(), false).unwrap();
        assert_eq!(reply.model, "llama3");
    }

    #[test]
    fn request_id_header_per_provider() {
        let both = headers(&[("Request-Id", "a1"), ("X-Request-Id", "o1")]);
        assert_eq!(request_id(Provider::OpenAi, &both).as_deref(), Some("o1"));
        assert_eq!(
            request_id(Provider::Anthropic, &both).as_deref(),
            Some("a1")
        );
        let only_x = headers(&[("x-request-id", "o2")]);
        assert_eq!(
            request_id(Provider::Anthropic, &only_x).as_deref(),
            Some("o2")
        );
        assert_eq!(
            request_id(Provider::OpenAi, &headers(&[("x-request-id", " ")])),
            None
        );
        assert_eq!(request_id(Provider::OpenAi, &[]), None);
    }

    #[test]
    fn permanent_client_errors() {
        for status in [400, 401, 402, 403, 404, 405, 413, 422] {
            let f = fail(
                Provider::OpenAi,
                status,
                &[],
                r#"{"error":{"message":"nope"}}"#,
            );
            assert!(f.permanent, "{status} should be permanent");
            assert_eq!(f.http_status, Some(status));
            assert!(f.message.contains(&status.to_string()), "{}", f.message);
            assert!(f.message.contains("nope"), "{}", f.message);
        }
    }

    #[test]
    fn transient_statuses() {
        for status in [408, 409, 425, 429, 500, 502, 503, 504, 520, 529, 599] {
            let f = fail(Provider::Anthropic, status, &[], "");
            assert!(!f.permanent, "{status} should be transient");
            assert_eq!(f.http_status, Some(status));
        }
    }

    #[test]
    fn redirects_and_informational_statuses_are_permanent() {
        let f = fail(
            Provider::OpenAi,
            301,
            &[("location", "https://api.example.com/v1/chat/completions")],
            "",
        );
        assert!(f.permanent);
        assert!(
            f.message.contains("redirect to https://api.example.com"),
            "{}",
            f.message
        );
        assert!(f.message.contains("base_url"), "{}", f.message);
        for status in [101, 304] {
            assert!(
                fail(Provider::OpenAi, status, &[], "").permanent,
                "{status}"
            );
        }
    }

    #[test]
    fn rate_limit_is_transient_with_retry_after() {
        let body = r#"{"error":{"message":"Rate limit reached for gpt-4o on tokens per min (TPM)",
            "type":"tokens","code":"rate_limit_exceeded"}}"#;
        let f = fail(
            Provider::OpenAi,
            429,
            &[("Retry-After", "7"), ("x-request-id", "r9")],
            body,
        );
        assert!(!f.permanent);
        assert_eq!(f.http_status, Some(429));
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(f.request_id.as_deref(), Some("r9"));
        assert!(f.message.contains("429 Too Many Requests"), "{}", f.message);
        assert!(
            f.message.contains("[tokens/rate_limit_exceeded]"),
            "{}",
            f.message
        );
        assert!(f.message.contains("Rate limit reached"), "{}", f.message);
    }

    #[test]
    fn exhausted_quota_is_permanent() {
        let by_code = r#"{"error":{"message":"You exceeded your current quota.","type":"x","code":"insufficient_quota"}}"#;
        let by_type = r#"{"error":{"message":"Nope.","type":"insufficient_quota","code":null}}"#;
        let by_quota_word = r#"{"error":{"message":"Monthly QUOTA reached"}}"#;
        let by_billing = r#"{"error":{"message":"Check your billing details"}}"#;
        let by_credit = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Your credit balance is too low"}}"#;
        let plain_text = "quota exceeded for this key";
        for body in [
            by_code,
            by_type,
            by_quota_word,
            by_billing,
            by_credit,
            plain_text,
        ] {
            let f = fail(Provider::OpenAi, 429, &[("retry-after", "3")], body);
            assert!(f.permanent, "{body}");
            assert!(
                f.message.contains("quota or credit exhausted"),
                "{}",
                f.message
            );
        }
        // The same words on a 5xx do not make it permanent.
        assert!(!fail(Provider::OpenAi, 503, &[], by_code).permanent);
    }

    #[test]
    fn anthropic_overloaded_is_transient() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let f = fail(
            Provider::Anthropic,
            529,
            &[("retry-after", "12"), ("request-id", "req_a")],
            body,
        );
        assert!(!f.permanent);
        assert_eq!(f.http_status, Some(529));
        assert_eq!(f.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(f.request_id.as_deref(), Some("req_a"));
        assert_eq!(
            f.message,
            "anthropic returned HTTP 529 Overloaded [overloaded_error]: Overloaded"
        );
    }

    #[test]
    fn status_messages_carry_hints() {
        let f = fail(
            Provider::OpenAi,
            401,
            &[],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        );
        assert_eq!(
            f.message,
            "openai returned HTTP 401 Unauthorized (check the api key) \
             [invalid_request_error/invalid_api_key]: Incorrect API key provided"
        );
        let f = fail(
            Provider::OpenAi,
            404,
            &[],
            r#"{"error":"model 'llama9' not found"}"#,
        );
        assert_eq!(
            f.message,
            "openai returned HTTP 404 Not Found (check base_url and model): model 'llama9' not found"
        );
    }

    #[test]
    fn error_detail_shapes() {
        let d = error_detail(
            br#"{"error":{"message":"bad","type":"invalid_request_error","code":42}}"#,
        );
        assert_eq!(d.message, "bad");
        assert_eq!(d.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(d.code.as_deref(), Some("42"));
        assert_eq!(error_detail(br#"{"error":"boom"}"#).message, "boom");
        assert_eq!(
            error_detail(br#"{"detail":"Not Found"}"#).message,
            "Not Found"
        );
        assert_eq!(
            error_detail(br#"{"detail":[{"loc":["body"],"msg":"field required"}]}"#).message,
            r#"[{"loc":["body"],"msg":"field required"}]"#
        );
        assert_eq!(error_detail(br#"{"message":"m"}"#).message, "m");
        assert_eq!(
            error_detail(br#"{"error":{"code":"c"}}"#).message,
            r#"{"code":"c"}"#
        );
        assert_eq!(error_detail(br#"[1,2]"#).message, "[1,2]");
        assert_eq!(error_detail(b"").message, "(empty body)");
        assert_eq!(error_detail(b"  \n ").message, "(empty body)");
        assert_eq!(
            error_detail(b"<html>\n<body>502   Bad Gateway</body>\n</html>").message,
            "<html> <body>502 Bad Gateway</body> </html>"
        );
        assert_eq!(
            error_detail(b"bad \xff bytes").message,
            "bad \u{fffd} bytes"
        );
    }

    #[test]
    fn error_detail_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let body = serde_json::json!({"error": {"message": long}}).to_string();
        let d = error_detail(body.as_bytes());
        assert_eq!(d.message.chars().count(), DETAIL_CHARS + 3);
        assert!(d.message.ends_with("é..."));
        let f = fail(Provider::OpenAi, 400, &[], &body);
        assert!(f.message.chars().count() < 600, "{}", f.message.len());
    }

    #[test]
    fn retry_after_values() {
        let ra = |v: &str| retry_after(&headers(&[("Retry-After", v)]));
        assert_eq!(ra("7"), Some(Duration::from_secs(7)));
        assert_eq!(ra(" 0 "), Some(Duration::ZERO));
        assert_eq!(ra("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(ra("-1"), None);
        assert_eq!(ra("abc"), None);
        assert_eq!(ra(""), None);
        assert_eq!(ra("."), None);
        assert_eq!(ra("1.2.3"), None);
        assert_eq!(ra("inf"), None);
        assert_eq!(ra("1e3"), None);
        assert_eq!(ra("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(ra("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&[]), None);
        // The millisecond header wins when both are present and readable.
        let both = headers(&[("retry-after", "2"), ("retry-after-ms", "250")]);
        assert_eq!(retry_after(&both), Some(Duration::from_millis(250)));
        let bad_ms = headers(&[("retry-after", "2"), ("retry-after-ms", "soon")]);
        assert_eq!(retry_after(&bad_ms), Some(Duration::from_secs(2)));
    }

    #[test]
    fn malformed_success_bodies_are_transient_failures() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "the body is empty"),
            (b"   ", "the body is empty"),
            (b"<html>hello</html>", "not valid JSON"),
            (
                br#"{"choices":[{"message":{"content":"Hel"#,
                "truncated JSON",
            ),
            (b"[1,2,3]", "expected a JSON object, got an array"),
            (b"null", "expected a JSON object, got null"),
            (
                b"{\"choices\":[{\"message\":{\"content\":\"\xff\xfe\"}}]}",
                "not valid UTF-8 (invalid byte at offset 35)",
            ),
            (b"{\"choices\":[]}\0", "NUL byte at offset 14"),
            (
                br#"{"error":{"message":"server exploded","type":"server_error"}}"#,
                "error object: server exploded",
            ),
            (
                br#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#,
                "error object: Internal",
            ),
            (br#"{"choices":[]}"#, "\"choices\" is empty"),
            (br#"{"id":"x"}"#, "no \"choices\""),
            (
                br#"{"choices":[{"message":{"content":null}}]}"#,
                "content is null",
            ),
            (
                br#"{"choices":[{"message":{"content":"a\u0000b"}}]}"#,
                "NUL character",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"12"}}"#,
                "usage.prompt_tokens is a string",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-3}}"#,
                "usage.prompt_tokens is -3",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":1.5}}"#,
                "usage.completion_tokens is 1.5",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"usage":[1]}"#,
                "\"usage\" is an array",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"model":7}"#,
                "\"model\" is a number",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"}}],"model":"a\u0000"}"#,
                "\"model\" contains a NUL",
            ),
            (
                br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":\"\u0000\"}"}}]}}]}"#,
                "the tool call \"f\" contains a NUL character",
            ),
        ];
        for (body, expected) in cases {
            let f = interpret(Provider::OpenAi, "m", 200, &[], body, false).unwrap_err();
            assert!(
                f.message.starts_with("malformed response from openai: "),
                "{}",
                f.message
            );
            assert!(
                f.message.contains(expected),
                "expected {expected:?} in {:?}",
                f.message
            );
            assert!(!f.permanent);
            assert_eq!(f.http_status, Some(200));
            assert_eq!(f.retry_after, None);
        }
    }

    #[test]
    fn deeply_nested_bodies_do_not_overflow_the_stack() {
        let deep = format!(
            "{{\"choices\":{}{}}}",
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        let f = interpret(Provider::OpenAi, "m", 200, &[], deep.as_bytes(), false).unwrap_err();
        assert!(
            f.message.contains("recursion limit exceeded"),
            "{}",
            f.message
        );
        let f = interpret(Provider::OpenAi, "m", 500, &[], deep.as_bytes(), false).unwrap_err();
        assert!(!f.permanent);
        assert!(f.message.chars().count() < 600);
    }

    #[test]
    fn other_2xx_statuses_are_parsed_too() {
        let reply =
            interpret(Provider::OpenAi, "m", 201, &[], OK_OPENAI.as_bytes(), false).unwrap();
        assert_eq!(reply.content, "Hello");
        let f = interpret(Provider::OpenAi, "m", 204, &[], b"", false).unwrap_err();
        assert_eq!(f.http_status, Some(204));
        assert!(!f.permanent);
    }

    #[test]
    fn oversized_bodies_fail() {
        let f = interpret(Provider::Anthropic, "m", 200, &[], b"{\"content\":[", true).unwrap_err();
        assert_eq!(
            f.message,
            "malformed response from anthropic: the body is larger than 10 MB"
        );
        assert_eq!(f.http_status, Some(200));
        assert!(!f.permanent);
        // A huge error body is still classified by its status.
        let f = interpret(Provider::Anthropic, "m", 401, &[], b"{\"error\":", true).unwrap_err();
        assert!(f.permanent);
        assert_eq!(f.http_status, Some(401));
    }

    #[test]
    fn redaction_removes_every_occurrence() {
        let f = Failure {
            message: "key sk-SECRET-1 and again sk-SECRET-1".into(),
            http_status: None,
            retry_after: None,
            permanent: false,
            request_id: Some("sk-SECRET-1".into()),
        };
        let f = redact(f, "sk-SECRET-1");
        assert_eq!(f.message, "key <redacted> and again <redacted>");
        assert_eq!(f.request_id.as_deref(), Some("<redacted>"));
        let short = redact(
            Failure {
                message: "abc".into(),
                ..f
            },
            "ab",
        );
        assert_eq!(short.message, "abc");
    }

    #[test]
    fn redaction_of_bodies() {
        let body = b"a KEY-1234 b KEY-1234KEY-1234 c KEY-123";
        assert!(contains_secret(body, "KEY-1234"));
        assert!(!contains_secret(body, "KEY-9999"));
        assert!(!contains_secret(b"abc", "ab"));
        assert_eq!(
            redact_bytes(body, "KEY-1234"),
            b"a <redacted> b <redacted><redacted> c KEY-123".to_vec()
        );
        assert_eq!(redact_bytes(b"abab", "ab"), b"abab".to_vec());
        assert_eq!(redact_bytes(b"", "KEY-1234"), Vec::<u8>::new());
    }

    #[test]
    fn helpers() {
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            header(&headers(&[("Content-Type", " a ")]), "content-type"),
            Some("a")
        );
    }
}
