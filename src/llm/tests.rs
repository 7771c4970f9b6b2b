//! End-to-end tests of [`call`] against a tiny HTTP/1.1 server on 127.0.0.1.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

const FAKE_KEY: &str = "sk-FAKE-KEY-do-not-leak-7f3a9c";

/// What the server saw.
#[derive(Debug)]
struct Captured {
    method: String,
    path: String,
    /// (lower-case name, value)
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

enum Behaviour {
    /// Write these bytes, then close.
    Respond(Vec<u8>),
    /// Write these bytes, then keep the connection open without writing more.
    RespondThenHang(Vec<u8>),
    /// Read the request and never answer.
    Hang,
}

struct Server {
    base_url: String,
    captured: mpsc::Receiver<Captured>,
    /// Dropping it releases a hanging connection.
    _release: mpsc::Sender<()>,
}

impl Server {
    fn request(&self) -> Captured {
        self.captured
            .recv_timeout(Duration::from_secs(5))
            .expect("the server received a request")
    }
}

/// Serves exactly one connection.
fn serve(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (captured_tx, captured) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let Some(request) = read_request(&mut stream) else {
            return;
        };
        let _ = captured_tx.send(request);
        match behaviour {
            Behaviour::Respond(bytes) => {
                // The client may stop reading early (oversized bodies): ignore write errors.
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
            Behaviour::RespondThenHang(bytes) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                let _ = released.recv_timeout(Duration::from_secs(10));
            }
            Behaviour::Hang => {
                let _ = released.recv_timeout(Duration::from_secs(10));
            }
        }
    });
    Server {
        base_url,
        captured,
        _release: release,
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Captured {
        method,
        path,
        headers,
        body,
    })
}

fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn json_response(status: u16, headers: &[(&str, &str)], body: Value) -> Behaviour {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/json"));
    Behaviour::Respond(response(status, &headers, body.to_string().as_bytes()))
}

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
        tool_calls: vec![],
        tool_call_id: None,
        is_error: false,
    }
}

/// A tool call, for the request and reply tests of both protocols.
pub(super) fn tool_call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// A tool with a description and parameters, for the request tests of both protocols.
pub(super) fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "The weather in a city.".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }
}

fn tool(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: String::new(),
        parameters: json!({"type": "object"}),
    }
}

fn request(provider: Provider, base_url: &str) -> Request {
    Request {
        provider,
        base_url: base_url.to_string(),
        api_key: Some(FAKE_KEY.to_string()),
        model: "test-model".into(),
        system: "You are a test.".into(),
        messages: vec![msg(Role::User, "Hello \"there\"\nsecond line")],
        temperature: 0.3,
        max_tokens: 100,
        tools: vec![],
        output_schema: None,
    }
}

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    total: Duration::from_secs(10),
};

fn openai_ok() -> Value {
    json!({
        "id": "chatcmpl-9", "object": "chat.completion", "model": "test-model-0613",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}
    })
}

fn anthropic_ok() -> Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-1",
        "content": [{"type": "text", "text": "Bonjour"}, {"type": "text", "text": " !"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 30, "output_tokens": 4}
    })
}

fn assert_no_key(failure: &Failure) {
    assert!(!failure.message.contains(FAKE_KEY), "{}", failure.message);
    assert!(!format!("{failure:?}").contains(FAKE_KEY), "{failure:?}");
}

#[test]
fn openai_request_and_reply() {
    let server = serve(json_response(
        200,
        &[("x-request-id", "req_oa_1")],
        openai_ok(),
    ));
    let mut req = request(Provider::OpenAi, &server.base_url);
    req.messages.push(msg(Role::Assistant, "Hi"));
    req.messages.push(msg(Role::User, "Bye"));
    let reply = call(&req, TIMEOUTS).unwrap();
    assert_eq!(
        reply,
        Reply {
            content: "Hi!".into(),
            input_tokens: 21,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 2,
            model: "test-model-0613".into(),
            request_id: Some("req_oa_1".into()),
            tool_calls: vec![],
        }
    );
    let seen = server.request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {FAKE_KEY}").as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("anthropic-version"), None);
    assert_eq!(
        seen.json(),
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You are a test."},
                {"role": "user", "content": "Hello \"there\"\nsecond line"},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": "Bye"},
            ],
            "temperature": 0.3,
            "max_tokens": 100,
        })
    );
}

#[test]
fn openai_without_key_or_system() {
    let server = serve(json_response(200, &[], openai_ok()));
    let mut req = request(Provider::OpenAi, &format!("{}/", server.base_url));
    req.api_key = None;
    req.system = String::new();
    let reply = call(&req, TIMEOUTS).unwrap();
    assert_eq!(reply.content, "Hi!");
    assert_eq!(reply.request_id, None);
    let seen = server.request();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.json()["messages"],
        json!([{"role": "user", "content": "Hello \"there\"\nsecond line"}])
    );
}

#[test]
fn blank_api_key_is_not_sent() {
    let server = serve(json_response(200, &[], openai_ok()));
    let mut req = request(Provider::OpenAi, &server.base_url);
    req.api_key = Some("  ".into());
    call(&req, TIMEOUTS).unwrap();
    assert_eq!(server.request().header("authorization"), None);
}

#[test]
fn anthropic_request_and_reply() {
    let server = serve(json_response(
        200,
        &[("request-id", "req_an_1")],
        anthropic_ok(),
    ));
    let mut req = request(Provider::Anthropic, &server.base_url);
    req.messages = vec![
        msg(Role::Assistant, "Earlier answer"),
        msg(Role::User, "Part one"),
        msg(Role::User, "Part two"),
        msg(Role::Assistant, "Sure"),
    ];
    let reply = call(&req, TIMEOUTS).unwrap();
    assert_eq!(
        reply,
        Reply {
            content: "Bonjour !".into(),
            input_tokens: 30,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 4,
            model: "claude-test-1".into(),
            request_id: Some("req_an_1".into()),
            tool_calls: vec![],
        }
    );
    let seen = server.request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(FAKE_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.json(),
        json!({
            "model": "test-model",
            "max_tokens": 100,
            "temperature": 0.3,
            "system": "You are a test.",
            "messages": [
                {"role": "user", "content": "(conversation continues)"},
                {"role": "assistant", "content": "Earlier answer"},
                {"role": "user", "content": "Part one\n\nPart two"},
                {"role": "assistant", "content": "Sure"},
            ],
        })
    );
}

#[test]
fn anthropic_without_system_or_key() {
    let server = serve(json_response(200, &[], anthropic_ok()));
    let mut req = request(Provider::Anthropic, &server.base_url);
    req.system = String::new();
    req.api_key = None;
    call(&req, TIMEOUTS).unwrap();
    let seen = server.request();
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let body = seen.json();
    assert!(body.get("system").is_none(), "{body}");
}

/// A tool-calling turn end to end: the tools and the earlier calls go out, the new calls
/// come back in the [`Reply`], for each provider's wire format.
#[test]
fn tool_calls_round_trip() {
    let spec = ToolSpec {
        name: "lookup".into(),
        description: "Look a member up.".into(),
        parameters: json!({"type": "object", "properties": {"id": {"type": "integer"}}}),
    };
    let earlier = ToolCall {
        id: "c0".into(),
        name: "lookup".into(),
        arguments: r#"{"id":1}"#.into(),
    };
    let replies = [
        (
            Provider::OpenAi,
            json!({"model": "m", "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"id\":2}"}}
            ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ),
        (
            Provider::Anthropic,
            json!({"type": "message", "model": "m", "content": [
                {"type": "tool_use", "id": "c1", "name": "lookup", "input": {"id": 2}}
            ], "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 4}}),
        ),
    ];
    for (provider, reply) in replies {
        let server = serve(json_response(200, &[], reply));
        let mut req = request(provider, &server.base_url);
        req.tools = vec![spec.clone()];
        req.messages = vec![
            Message::user("Members 1 and 2?"),
            Message::assistant("", vec![earlier.clone()]),
            Message::tool_result("c0", r#"{"name":"Ana"}"#, false),
        ];
        let reply = call(&req, TIMEOUTS).unwrap();
        assert_eq!(reply.content, "", "{provider}");
        assert_eq!(
            reply.tool_calls,
            vec![ToolCall {
                id: "c1".into(),
                name: "lookup".into(),
                arguments: r#"{"id":2}"#.into(),
            }],
            "{provider}"
        );
        assert_eq!((reply.input_tokens, reply.output_tokens), (9, 4));
        let body = server.request().json();
        assert_eq!(
            body["tools"].as_array().map(Vec::len),
            Some(1),
            "{provider}"
        );
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let sent_calls = match provider {
            Provider::OpenAi => &messages[2]["tool_calls"][0]["id"],
            Provider::Anthropic => &messages[1]["content"][0]["id"],
        };
        assert_eq!(sent_calls, "c0", "{provider}: {body}");
    }
}

/// A structured answer end to end: OpenAI's comes back as the content; Anthropic's as the
/// answer tool's input, which becomes the content.
#[test]
fn structured_answers_round_trip() {
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
    let replies = [
        (
            Provider::OpenAi,
            json!({"choices": [{"message": {"content": "{\"ok\":true}"}}]}),
        ),
        (
            Provider::Anthropic,
            json!({"type": "message", "content": [
                {"type": "tool_use", "id": "t", "name": ANSWER_TOOL, "input": {"ok": true}}
            ]}),
        ),
    ];
    for (provider, reply) in replies {
        let server = serve(json_response(200, &[], reply));
        let mut req = request(provider, &server.base_url);
        req.output_schema = Some(schema.clone());
        let reply = call(&req, TIMEOUTS).unwrap();
        assert_eq!(reply.content, r#"{"ok":true}"#, "{provider}");
        assert!(reply.tool_calls.is_empty(), "{provider}");
        let body = server.request().json();
        let sent_schema = match provider {
            Provider::OpenAi => &body["response_format"]["json_schema"]["schema"],
            Provider::Anthropic => &body["tools"][0]["input_schema"],
        };
        assert_eq!(sent_schema, &schema, "{provider}: {body}");
    }
}

#[test]
fn huge_and_hostile_prompt_round_trips() {
    let server = serve(json_response(200, &[], openai_ok()));
    let mut req = request(Provider::OpenAi, &server.base_url);
    let hostile = format!("{}\"}}]}} \0 \\ \r\n 🦀", "y".repeat(1024 * 1024));
    req.messages = vec![msg(Role::User, &hostile)];
    req.system = "sys \"quoted\"\0".into();
    call(&req, TIMEOUTS).unwrap();
    let body = server.request().json();
    assert_eq!(body["messages"][0]["content"], "sys \"quoted\"\0");
    assert_eq!(
        body["messages"][1]["content"].as_str(),
        Some(hostile.as_str())
    );
}

#[test]
fn rate_limited_with_retry_after() {
    let server = serve(json_response(
        429,
        &[("Retry-After", "7"), ("x-request-id", "req_429")],
        json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
    ));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(429));
    assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
    assert!(!failure.permanent);
    assert_eq!(failure.request_id.as_deref(), Some("req_429"));
    assert!(
        failure.message.contains("Rate limit reached"),
        "{}",
        failure.message
    );
    assert_no_key(&failure);
}

#[test]
fn exhausted_quota_is_permanent_end_to_end() {
    let server = serve(json_response(
        429,
        &[],
        json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}),
    ));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(429));
    assert!(failure.permanent);
}

#[test]
fn anthropic_overloaded_is_transient_end_to_end() {
    let server = serve(json_response(
        529,
        &[("request-id", "req_529")],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let failure = call(&request(Provider::Anthropic, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(529));
    assert!(!failure.permanent);
    assert_eq!(failure.retry_after, None);
    assert_eq!(failure.request_id.as_deref(), Some("req_529"));
}

#[test]
fn unauthorized_echoing_the_key_is_permanent_and_redacted() {
    let server = serve(json_response(
        401,
        &[],
        json!({"error": {"message": format!("Incorrect API key provided: {FAKE_KEY}."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
    ));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(401));
    assert!(failure.permanent);
    assert!(
        failure
            .message
            .contains("Incorrect API key provided: <redacted>."),
        "{}",
        failure.message
    );
    assert_no_key(&failure);
}

#[test]
fn key_cut_by_truncation_is_still_redacted() {
    // The key straddles the 500-character cut of the error message: not even its prefix
    // may survive.
    let message = format!("{}{FAKE_KEY} trailing text", "x".repeat(495));
    let server = serve(json_response(
        400,
        &[],
        json!({"error": {"message": message}}),
    ));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert!(failure.permanent);
    assert!(
        !failure.message.contains(&FAKE_KEY[..6]),
        "{}",
        failure.message
    );
    assert!(
        failure.message.ends_with("xxxxx<reda..."),
        "{}",
        failure.message
    );
}

#[test]
fn malformed_success_echoing_the_key_is_redacted() {
    let body = format!("<html>proxy says {FAKE_KEY}</html>");
    let server = serve(Behaviour::Respond(response(200, &[], body.as_bytes())));
    let failure = call(&request(Provider::Anthropic, &server.base_url), TIMEOUTS).unwrap_err();
    assert!(
        failure
            .message
            .starts_with("malformed response from anthropic: "),
        "{}",
        failure.message
    );
    assert_eq!(failure.http_status, Some(200));
    assert!(!failure.permanent);
    assert_no_key(&failure);
}

#[test]
fn server_error_is_transient() {
    let server = serve(Behaviour::Respond(response(
        503,
        &[("Retry-After", "2")],
        b"upstream down",
    )));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(503));
    assert_eq!(failure.retry_after, Some(Duration::from_secs(2)));
    assert!(!failure.permanent);
    assert!(
        failure.message.contains("upstream down"),
        "{}",
        failure.message
    );
}

#[test]
fn chunked_reply_is_read() {
    let body = openai_ok().to_string();
    let (a, b) = body.split_at(body.len() / 2);
    let raw = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let server = serve(Behaviour::Respond(raw.into_bytes()));
    let reply = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap();
    assert_eq!(reply.content, "Hi!");
}

#[test]
fn silent_server_times_out_within_the_total() {
    let server = serve(Behaviour::Hang);
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_millis(500),
    };
    let started = Instant::now();
    let failure = call(&request(Provider::OpenAi, &server.base_url), timeouts).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(elapsed >= Duration::from_millis(400), "took {elapsed:?}");
    assert_eq!(failure.http_status, None);
    assert!(!failure.permanent);
    assert!(
        failure.message.contains("timed out after 500ms"),
        "{}",
        failure.message
    );
    assert_no_key(&failure);
    server.request();
}

#[test]
fn stalled_body_times_out() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\nx-request-id: req_slow\r\n\r\n{\"choices\":";
    let server = serve(Behaviour::RespondThenHang(head.to_vec()));
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_millis(500),
    };
    let started = Instant::now();
    let failure = call(&request(Provider::OpenAi, &server.base_url), timeouts).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(failure.http_status, None);
    assert!(!failure.permanent);
    assert!(
        failure
            .message
            .contains("reading the body of the HTTP 200 response"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("timed out"), "{}", failure.message);
    assert_eq!(failure.request_id.as_deref(), Some("req_slow"));
}

#[test]
fn connection_closed_mid_body_is_transient() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\":[";
    let server = serve(Behaviour::Respond(head.to_vec()));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, None);
    assert!(!failure.permanent);
    assert!(
        failure.message.contains("reading the body"),
        "{}",
        failure.message
    );
}

#[test]
fn closed_without_response_is_transient() {
    let server = serve(Behaviour::Respond(Vec::new()));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, None);
    assert!(!failure.permanent);
    assert!(
        failure.message.starts_with("openai request to 127.0.0.1:"),
        "{}",
        failure.message
    );
}

#[test]
fn refused_connection_is_transient() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let req = request(Provider::Anthropic, &format!("http://127.0.0.1:{port}/v1"));
    let started = Instant::now();
    let failure = call(&req, TIMEOUTS).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(failure.http_status, None);
    assert!(!failure.permanent);
    assert_eq!(failure.retry_after, None);
    assert!(
        failure.message.contains("connection refused"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        failure.message
    );
    assert_no_key(&failure);
}

#[test]
fn oversized_body_is_a_failure() {
    let body = vec![b' '; MAX_BODY_BYTES + 4096];
    let server = serve(Behaviour::Respond(response(200, &[], &body)));
    let failure = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap_err();
    assert_eq!(failure.http_status, Some(200));
    assert!(!failure.permanent);
    assert!(
        failure.message.contains("larger than 10 MB"),
        "{}",
        failure.message
    );
}

#[test]
fn body_of_exactly_the_limit_is_accepted() {
    let mut body = openai_ok().to_string().into_bytes();
    body.resize(MAX_BODY_BYTES, b' ');
    let server = serve(Behaviour::Respond(response(200, &[], &body)));
    let reply = call(&request(Provider::OpenAi, &server.base_url), TIMEOUTS).unwrap();
    assert_eq!(reply.content, "Hi!");
}

#[test]
fn invalid_requests_fail_permanently_before_sending() {
    let server = serve(Behaviour::Hang);
    let base = request(Provider::OpenAi, &server.base_url);
    let cases: Vec<(Request, &str)> = vec![
        (
            Request {
                base_url: "ftp://example.com".into(),
                ..base.clone()
            },
            "must start with http:// or https://",
        ),
        (
            Request {
                base_url: "".into(),
                ..base.clone()
            },
            "must start with http:// or https://",
        ),
        (
            Request {
                base_url: "€€€://x.example".into(),
                ..base.clone()
            },
            "must start with http:// or https://",
        ),
        (
            Request {
                model: " ".into(),
                ..base.clone()
            },
            "no model",
        ),
        (
            Request {
                messages: vec![],
                ..base.clone()
            },
            "no messages",
        ),
        (
            Request {
                temperature: f64::NAN,
                ..base.clone()
            },
            "finite",
        ),
        (
            Request {
                temperature: f64::INFINITY,
                ..base.clone()
            },
            "finite",
        ),
        (
            Request {
                api_key: Some(format!("{FAKE_KEY}\r\nX-Evil: 1")),
                ..base.clone()
            },
            "api key contains characters",
        ),
        (
            Request {
                api_key: Some("sk bad".into()),
                ..base.clone()
            },
            "api key contains characters",
        ),
        (
            Request {
                messages: vec![msg(Role::User, "q"), msg(Role::Tool, "result")],
                ..base.clone()
            },
            "message 1 of the openai request is a tool result without a tool_call_id",
        ),
        (
            Request {
                messages: vec![Message::tool_result(" ", "result", false)],
                ..base.clone()
            },
            "message 0 of the openai request is a tool result without a tool_call_id",
        ),
        (
            Request {
                tools: vec![tool("f"), tool(" ")],
                ..base.clone()
            },
            "tool 1 of the openai request has no name",
        ),
        (
            Request {
                tools: vec![tool(ANSWER_TOOL)],
                ..base.clone()
            },
            "the tool name \"ai_agents_final_answer\" is reserved for structured answers",
        ),
        (
            Request {
                tools: vec![tool("f"), tool("g"), tool("f")],
                ..base.clone()
            },
            "the openai request offers two tools named \"f\"",
        ),
    ];
    for (req, expected) in cases {
        let failure = call(&req, TIMEOUTS).unwrap_err();
        assert!(failure.permanent, "{}", failure.message);
        assert_eq!(failure.http_status, None);
        assert!(
            failure.message.contains(expected),
            "{} lacks {expected}",
            failure.message
        );
        assert_no_key(&failure);
    }
    assert!(server.captured.try_recv().is_err(), "nothing was sent");
}

#[test]
fn request_debug_hides_the_key() {
    let req = request(Provider::OpenAi, "https://api.openai.com/v1");
    let debug = format!("{req:?}");
    assert!(!debug.contains(FAKE_KEY), "{debug}");
    assert!(debug.contains("api_key: Some(\"<redacted>\")"), "{debug}");
    let pretty = format!("{req:#?}");
    assert!(!pretty.contains(FAKE_KEY));
    let with_tools = Request {
        tools: vec![tool("lookup")],
        output_schema: Some(json!({"type": "object"})),
        ..req.clone()
    };
    let debug = format!("{with_tools:?}");
    assert!(debug.contains("name: \"lookup\""), "{debug}");
    assert!(debug.contains("output_schema: Some("), "{debug}");
    assert!(!debug.contains(FAKE_KEY), "{debug}");
    let none = Request {
        api_key: None,
        ..req
    };
    assert!(format!("{none:?}").contains("api_key: None"));
}

#[test]
fn provider_names() {
    assert_eq!(Provider::parse("openai"), Some(Provider::OpenAi));
    assert_eq!(Provider::parse("anthropic"), Some(Provider::Anthropic));
    assert_eq!(Provider::parse(" OpenAI "), Some(Provider::OpenAi));
    assert_eq!(Provider::parse("claude"), None);
    assert_eq!(Provider::parse(""), None);
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        assert_eq!(Provider::parse(provider.name()), Some(provider));
        assert_eq!(provider.to_string(), provider.name());
    }
}
