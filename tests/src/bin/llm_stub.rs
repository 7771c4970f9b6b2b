//! llm_stub: a scriptable stand-in for the OpenAI Chat Completions API and the Anthropic
//! Messages API, for the tests and the demo of the extension's LLM worker.
//!
//! `llm_stub [--port N] [--script FILE] [--verbose] [--exit-with-stdin]` binds 127.0.0.1:N
//! (0, the default, picks a free port), queues the behaviours in FILE (as `POST /_stub/script`
//! takes them), prints exactly one line `listening 127.0.0.1:<port>` to stdout and
//! serves until killed, until `POST /_stub/shutdown`, or (with `--exit-with-stdin`) until its
//! stdin reaches its end. One thread per connection, HTTP/1.1 with keep-alive,
//! Content-Length or chunked request bodies, `Expect: 100-continue` honoured.
//!
//! Provider endpoints (every request on them is recorded, see `GET /_stub/requests`):
//! - `POST /v1/chat/completions`: OpenAI-shaped reply, header `x-request-id: req-stub-N`.
//! - `POST /v1/messages`: Anthropic-shaped reply, header `request-id: req-stub-N`.
//!
//! Control endpoints (JSON):
//! - `POST /_stub/script`: one behaviour object or an array of them, appended to the queue.
//! - `GET /_stub/script`: the behaviours still queued.
//! - `POST /_stub/default`: `{"delay_ms": N, "call_first_tool": bool}` (either or both), for
//!   requests no behaviour applies to: their delay, and whether one that declares tools and
//!   carries no tool result yet gets a call of its first tool (arguments `{}`).
//! - `GET /_stub/requests`: the recorded requests.
//! - `POST /_stub/reset`: clears the queue, the default delay and the records.
//! - `POST /_stub/shutdown`: answers, then exits.
//!
//! A behaviour has optional fields `status`, `delay_ms`, `retry_after`, `body`, `content`,
//! `tool_calls`, `usage`, `truncate`, `hang`, `drip_ms`, `error_type` and `match`; see
//! [`Behaviour`].
//!
//! `tool_calls` is an array of `{"id"?: string, "name": string, "arguments": any JSON}`: the
//! normal reply asks for these calls in the provider's wire format. OpenAI:
//! `choices[0].message` is `{"role": "assistant", "content": <content or null>,
//! "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}]}` with the
//! arguments serialized to a JSON string, and `finish_reason` is `"tool_calls"`. Anthropic:
//! `content` is a text block (only when `content` is given) followed by `{"type":
//! "tool_use", "id", "name", "input": <arguments>}` blocks, and `stop_reason` is
//! `"tool_use"`. Without an `id`, call i (from 0) of request N gets `call_N_i` (OpenAI) or
//! `toolu_N_i` (Anthropic). Completion tokens count only the text, as without tool calls.
use serde_json::{json, Map, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What one provider request gets instead of the normal, immediate 200.
#[derive(Debug)]
struct Behaviour {
    /// HTTP status, 200 by default.
    status: u16,
    /// Sleep before answering; replaces the default delay.
    delay_ms: Option<u64>,
    /// Sent as `Retry-After` (OpenAI) or `retry-after` (Anthropic).
    retry_after: Option<String>,
    /// Sent verbatim instead of the normal (or error) body.
    body: Option<String>,
    /// The assistant text instead of the default "stub reply to: ..."; with `tool_calls`,
    /// no text at all unless given.
    content: Option<String>,
    /// The tools the reply asks to call.
    tool_calls: Option<Vec<ToolCall>>,
    /// Fields set in the normal body's `usage` over the counted ones (a provider's cache
    /// counts, say).
    usage: Option<Map<String, Value>>,
    /// Declare a longer Content-Length than sent, send half the body, close the connection.
    truncate: bool,
    /// Read the request, never answer; the connection stays open until the client closes it
    /// or the server exits.
    hang: bool,
    /// Send the headers, then the body one byte every `drip_ms` ms.
    drip_ms: Option<u64>,
    /// The error type of the provider's error JSON for a non-2xx status without `body`.
    error_type: Option<String>,
    /// Applies only to a request whose raw body contains this substring.
    matches: Option<String>,
    /// The behaviour as it was scripted, for `GET /_stub/script` and the records.
    source: Value,
}

/// A scripted tool call.
#[derive(Debug)]
struct ToolCall {
    /// Generated from the request's number when absent.
    id: Option<String>,
    name: String,
    arguments: Value,
}

impl ToolCall {
    fn parse(i: usize, value: &Value) -> Result<ToolCall, String> {
        let at = format!("behaviour field \"tool_calls\"[{i}]");
        let object = value
            .as_object()
            .ok_or_else(|| format!("{at} must be an object, not {value}"))?;
        let mut call = ToolCall {
            id: None,
            name: String::new(),
            arguments: Value::Null,
        };
        let mut has_arguments = false;
        for (key, v) in object {
            match key.as_str() {
                "id" => {
                    call.id = Some(
                        v.as_str()
                            .filter(|id| !id.is_empty())
                            .ok_or_else(|| format!("{at}.id must be a non-empty string, not {v}"))?
                            .to_string(),
                    )
                }
                "name" => {
                    call.name = v
                        .as_str()
                        .filter(|name| !name.is_empty())
                        .ok_or_else(|| format!("{at}.name must be a non-empty string, not {v}"))?
                        .to_string()
                }
                "arguments" => {
                    call.arguments = v.clone();
                    has_arguments = true;
                }
                _ => return Err(format!("unknown field {key:?} in {at}")),
            }
        }
        if call.name.is_empty() {
            return Err(format!("{at} needs a \"name\""));
        }
        if !has_arguments {
            return Err(format!(
                "{at} needs \"arguments\" (any JSON, {{}} for none)"
            ));
        }
        Ok(call)
    }
}

impl Behaviour {
    fn parse(value: &Value) -> Result<Behaviour, String> {
        let object = value
            .as_object()
            .ok_or_else(|| format!("a behaviour must be a JSON object, not {value}"))?;
        let mut behaviour = Behaviour {
            status: 200,
            delay_ms: None,
            retry_after: None,
            body: None,
            content: None,
            tool_calls: None,
            usage: None,
            truncate: false,
            hang: false,
            drip_ms: None,
            error_type: None,
            matches: None,
            source: value.clone(),
        };
        for (key, v) in object {
            let wrong = |what: &str| format!("behaviour field {key:?} must be {what}, not {v}");
            match key.as_str() {
                "status" => {
                    let status = v.as_u64().ok_or_else(|| wrong("an integer"))?;
                    if !(200..=599).contains(&status) {
                        return Err(wrong("between 200 and 599"));
                    }
                    behaviour.status = status as u16;
                }
                "delay_ms" => {
                    behaviour.delay_ms =
                        Some(v.as_u64().ok_or_else(|| wrong("a non-negative integer"))?)
                }
                "drip_ms" => {
                    behaviour.drip_ms =
                        Some(v.as_u64().ok_or_else(|| wrong("a non-negative integer"))?)
                }
                "retry_after" => {
                    // Accept a number too: `"retry_after": 2` is an easy slip.
                    behaviour.retry_after = Some(match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(wrong("a string")),
                    });
                }
                "body" => {
                    behaviour.body = Some(v.as_str().ok_or_else(|| wrong("a string"))?.to_string())
                }
                "content" => {
                    behaviour.content =
                        Some(v.as_str().ok_or_else(|| wrong("a string"))?.to_string())
                }
                "tool_calls" => {
                    let calls = v.as_array().ok_or_else(|| wrong("an array"))?;
                    behaviour.tool_calls = Some(
                        calls
                            .iter()
                            .enumerate()
                            .map(|(i, call)| ToolCall::parse(i, call))
                            .collect::<Result<_, _>>()?,
                    );
                }
                "usage" => {
                    behaviour.usage = Some(v.as_object().ok_or_else(|| wrong("an object"))?.clone())
                }
                "error_type" => {
                    behaviour.error_type =
                        Some(v.as_str().ok_or_else(|| wrong("a string"))?.to_string())
                }
                "match" => {
                    behaviour.matches =
                        Some(v.as_str().ok_or_else(|| wrong("a string"))?.to_string())
                }
                "truncate" => behaviour.truncate = v.as_bool().ok_or_else(|| wrong("a boolean"))?,
                "hang" => behaviour.hang = v.as_bool().ok_or_else(|| wrong("a boolean"))?,
                _ => return Err(format!("unknown behaviour field {key:?}")),
            }
        }
        Ok(behaviour)
    }

    fn applies_to(&self, raw_body: &str) -> bool {
        self.matches.as_deref().is_none_or(|m| raw_body.contains(m))
    }
}

struct State {
    queue: Vec<Behaviour>,
    default_delay_ms: u64,
    /// Requests no behaviour applies to that declare tools and carry no tool result yet are
    /// answered with a call of their first tool (arguments `{}`), for benchmarks of the loop.
    call_first_tool: bool,
    records: Vec<Value>,
    /// Numbers provider requests (`seq`, and N of the ids); never reset, so ids stay unique
    /// for the life of the server.
    next_seq: u64,
}

struct Server {
    state: Mutex<State>,
    started: Instant,
    next_conn: AtomicU64,
    verbose: bool,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the whole stub down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Request {
    method: String,
    /// The request target as sent, query string included.
    target: String,
    http10: bool,
    /// Names lowercased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// How a response goes out on the wire.
enum Delivery {
    Normal,
    Truncate,
    Drip(u64),
    Hang,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay_ms: u64,
    delivery: Delivery,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
            delay_ms: 0,
            delivery: Delivery::Normal,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
}

fn bad_request_error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error"}})
}

fn read_line_limited(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request head too large",
        ));
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-line",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(reader: &mut impl BufRead, writer: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut budget = MAX_HEADER_BYTES;
    // Tolerate stray blank lines between requests (RFC 9112 section 2.2).
    let request_line = loop {
        match read_line_limited(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("unsupported version {version:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line_limited(reader, &mut budget)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        http10: version == "HTTP/1.0",
        headers,
        body: Vec::new(),
    };
    if request
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        && !request.http10
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut budget = MAX_HEADER_BYTES;
            let line = read_line_limited(reader, &mut budget)?
                .ok_or_else(|| invalid("closed in chunk size"))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while let Some(trailer) = read_line_limited(reader, &mut budget)? {
                    if trailer.is_empty() {
                        break;
                    }
                }
                break;
            }
            if request.body.len() + size > MAX_BODY_BYTES {
                return Err(invalid("request body too large"));
            }
            let start = request.body.len();
            request.body.resize(start + size, 0);
            reader.read_exact(&mut request.body[start..])?;
            read_line_limited(reader, &mut budget)?;
        }
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        if length > MAX_BODY_BYTES {
            return Err(invalid("request body too large"));
        }
        request.body.resize(length, 0);
        reader.read_exact(&mut request.body)?;
    }
    Ok(Some(request))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Stub Status",
    }
}

/// Blocks until the client closes the connection (or it fails): what `hang` does.
fn hang(reader: &mut impl Read) {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends `response`; returns whether the connection may carry another request.
fn send(
    reader: &mut impl Read,
    writer: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
) -> io::Result<bool> {
    if let Delivery::Hang = response.delivery {
        hang(reader);
        return Ok(false);
    }
    if response.delay_ms > 0 {
        thread::sleep(Duration::from_millis(response.delay_ms));
    }
    let truncate = matches!(response.delivery, Delivery::Truncate);
    let keep_alive = keep_alive && !truncate;
    let declared = if truncate {
        response.body.len() + 64
    } else {
        response.body.len()
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    head.push_str("content-type: application/json\r\n");
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {declared}\r\n"));
    head.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    match response.delivery {
        Delivery::Normal | Delivery::Hang => {
            let mut out = head.into_bytes();
            out.extend_from_slice(&response.body);
            writer.write_all(&out)?;
            writer.flush()?;
        }
        Delivery::Truncate => {
            let mut out = head.into_bytes();
            out.extend_from_slice(&response.body[..response.body.len() / 2]);
            writer.write_all(&out)?;
            writer.flush()?;
            let _ = writer.shutdown(Shutdown::Both);
        }
        Delivery::Drip(every_ms) => {
            writer.write_all(head.as_bytes())?;
            writer.flush()?;
            for (i, byte) in response.body.iter().enumerate() {
                if i > 0 {
                    thread::sleep(Duration::from_millis(every_ms));
                }
                writer.write_all(std::slice::from_ref(byte))?;
                writer.flush()?;
            }
        }
    }
    Ok(keep_alive)
}

fn handle_connection(server: Arc<Server>, stream: TcpStream) {
    let conn = server.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let response = Response::json(400, &bad_request_error(&e.to_string()));
                    let _ = send(&mut reader, &mut writer, &response, false);
                }
                return;
            }
        };
        let keep_alive = request.keep_alive();
        let (response, shutdown) = route(&server, &request, conn);
        if server.verbose {
            eprintln!(
                "llm_stub: conn {conn}: {} {} -> {}",
                request.method, request.target, response.status
            );
        }
        let keep = send(&mut reader, &mut writer, &response, keep_alive && !shutdown);
        if shutdown {
            std::process::exit(0);
        }
        if !matches!(keep, Ok(true)) {
            return;
        }
    }
}

fn route(server: &Server, request: &Request, conn: u64) -> (Response, bool) {
    let method = request.method.as_str();
    let response = match (method, request.path()) {
        ("POST", "/v1/chat/completions") => provider(server, request, conn, Provider::OpenAi),
        ("POST", "/v1/messages") => provider(server, request, conn, Provider::Anthropic),
        ("POST", "/_stub/script") => script(server, request),
        ("GET", "/_stub/script") => {
            let queued: Vec<Value> = server
                .lock()
                .queue
                .iter()
                .map(|b| b.source.clone())
                .collect();
            Response::json(200, &Value::Array(queued))
        }
        ("POST", "/_stub/default") => set_default(server, request),
        ("GET", "/_stub/requests") => {
            Response::json(200, &Value::Array(server.lock().records.clone()))
        }
        ("POST", "/_stub/reset") => {
            let mut state = server.lock();
            state.queue.clear();
            state.default_delay_ms = 0;
            state.call_first_tool = false;
            state.records.clear();
            Response::json(200, &json!({"ok": true}))
        }
        ("POST", "/_stub/shutdown") => return (Response::json(200, &json!({"ok": true})), true),
        _ => Response::json(
            404,
            &json!({"error": {"message": format!("llm_stub: no route for {} {}", method, request.target), "type": "not_found_error"}}),
        ),
    };
    (response, false)
}

fn parse_json_body(request: &Request) -> Result<Value, Response> {
    serde_json::from_slice(&request.body).map_err(|e| {
        Response::json(
            400,
            &bad_request_error(&format!("request body is not JSON: {e}")),
        )
    })
}

/// One behaviour (an object) or several (an array).
fn behaviours(value: &Value) -> Result<Vec<Behaviour>, String> {
    match value {
        Value::Array(items) => items.iter().map(Behaviour::parse).collect(),
        one => Behaviour::parse(one).map(|b| vec![b]),
    }
}

fn script(server: &Server, request: &Request) -> Response {
    let value = match parse_json_body(request) {
        Ok(v) => v,
        Err(response) => return response,
    };
    match behaviours(&value) {
        Ok(behaviours) => {
            let mut state = server.lock();
            state.queue.extend(behaviours);
            Response::json(200, &json!({"queued": state.queue.len()}))
        }
        Err(message) => Response::json(400, &bad_request_error(&message)),
    }
}

fn set_default(server: &Server, request: &Request) -> Response {
    let value = match parse_json_body(request) {
        Ok(v) => v,
        Err(response) => return response,
    };
    let delay_ms = value.get("delay_ms").map(Value::as_u64);
    let call_first_tool = value.get("call_first_tool").map(Value::as_bool);
    match (delay_ms, call_first_tool) {
        (Some(None), _) | (_, Some(None)) | (None, None) => Response::json(
            400,
            &bad_request_error(
                "expected {\"delay_ms\": <non-negative integer>, \"call_first_tool\": <boolean>} (either or both)",
            ),
        ),
        (delay_ms, call_first_tool) => {
            let mut state = server.lock();
            if let Some(Some(ms)) = delay_ms {
                state.default_delay_ms = ms;
            }
            if let Some(Some(on)) = call_first_tool {
                state.call_first_tool = on;
            }
            Response::json(
                200,
                &json!({"delay_ms": state.default_delay_ms, "call_first_tool": state.call_first_tool}),
            )
        }
    }
}

/// The text of a message's content: a string, or the concatenated `text` of content parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn redact(name: &str, value: &str) -> String {
    if name == "authorization" || name == "x-api-key" {
        format!("<redacted:len={}>", value.len())
    } else {
        value.to_string()
    }
}

fn default_error_type(provider: Provider, status: u16) -> &'static str {
    match (provider, status) {
        (_, 400) => "invalid_request_error",
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 404) => "not_found_error",
        (Provider::OpenAi, 429) => "rate_limit_exceeded",
        (Provider::Anthropic, 429) => "rate_limit_error",
        (Provider::Anthropic, 503 | 529) => "overloaded_error",
        (Provider::Anthropic, 500..) => "api_error",
        (Provider::OpenAi, 500..) => "server_error",
        _ => "stub_error",
    }
}

fn provider(server: &Server, request: &Request, conn: u64, provider: Provider) -> Response {
    let received_ms = server.started.elapsed().as_millis() as u64;
    let raw = String::from_utf8_lossy(&request.body);
    let parsed = serde_json::from_slice::<Value>(&request.body);

    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let value = redact(name, value);
        match headers.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), Value::String(value));
            }
        }
    }

    let (seq, behaviour, default_delay_ms, call_first_tool) = {
        let mut state = server.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        // A request that is not JSON gets a 400 and leaves the queue alone.
        let behaviour = match parsed {
            Ok(_) => state
                .queue
                .iter()
                .position(|b| b.applies_to(&raw))
                .map(|i| state.queue.remove(i)),
            Err(_) => None,
        };
        let mut record = json!({
            "seq": seq,
            "conn": conn,
            "received_ms": received_ms,
            "method": request.method,
            "path": request.target,
            "headers": headers,
            "body": parsed.as_ref().ok().cloned().unwrap_or(Value::Null),
            "behaviour": behaviour.as_ref().map(|b| b.source.clone()).unwrap_or(Value::Null),
        });
        if let Err(e) = &parsed {
            record["body_error"] = json!(e.to_string());
            record["raw_body"] = json!(raw);
        }
        state.records.push(record);
        (
            seq,
            behaviour,
            state.default_delay_ms,
            state.call_first_tool,
        )
    };

    let request_id = format!("req-stub-{seq}");
    let mut response_headers = vec![match provider {
        Provider::OpenAi => ("x-request-id".to_string(), request_id),
        Provider::Anthropic => ("request-id".to_string(), request_id),
    }];

    let body = match parsed {
        Ok(body) => body,
        Err(e) => {
            let message = format!("request body is not JSON: {e}");
            let error = match provider {
                Provider::OpenAi => bad_request_error(&message),
                Provider::Anthropic => {
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
                }
            };
            let mut response = Response::json(400, &error);
            response.headers = response_headers;
            response.delay_ms = default_delay_ms;
            return response;
        }
    };

    let b = behaviour.as_ref();
    let automatic = match (b, call_first_tool) {
        (None, true) => first_tool_call(&body),
        _ => None,
    };
    let status = b.map_or(200, |b| b.status);
    if let Some(retry_after) = b.and_then(|b| b.retry_after.clone()) {
        // One header; names are case-insensitive, so this is both Retry-After and retry-after.
        let name = match provider {
            Provider::OpenAi => "Retry-After",
            Provider::Anthropic => "retry-after",
        };
        response_headers.push((name.to_string(), retry_after));
    }

    let body_bytes = if let Some(verbatim) = b.and_then(|b| b.body.clone()) {
        verbatim.into_bytes()
    } else if (200..300).contains(&status) {
        let mut normal = normal_body(
            provider,
            &body,
            seq,
            b.and_then(|b| b.content.clone()),
            b.and_then(|b| b.tool_calls.as_deref())
                .or(automatic.as_ref().map(std::slice::from_ref)),
        );
        if let (Some(usage), Some(Value::Object(counted))) =
            (b.and_then(|b| b.usage.as_ref()), normal.get_mut("usage"))
        {
            counted.extend(usage.clone());
        }
        normal.to_string().into_bytes()
    } else {
        let error_type = b
            .and_then(|b| b.error_type.clone())
            .unwrap_or_else(|| default_error_type(provider, status).to_string());
        let error = match provider {
            Provider::OpenAi => {
                json!({"error": {"message": "stub error", "type": error_type, "code": error_type}})
            }
            Provider::Anthropic => {
                json!({"type": "error", "error": {"type": error_type, "message": "stub error"}})
            }
        };
        error.to_string().into_bytes()
    };

    let delivery = match b {
        Some(b) if b.hang => Delivery::Hang,
        Some(b) if b.truncate => Delivery::Truncate,
        Some(Behaviour {
            drip_ms: Some(ms), ..
        }) => Delivery::Drip(*ms),
        _ => Delivery::Normal,
    };
    Response {
        status,
        headers: response_headers,
        body: body_bytes,
        delay_ms: b.and_then(|b| b.delay_ms).unwrap_or(default_delay_ms),
        delivery,
    }
}

/// A call of the request's first declared tool, when it declares tools and carries no tool
/// result yet (OpenAI `role: tool` messages, Anthropic `tool_result` blocks).
fn first_tool_call(request: &Value) -> Option<ToolCall> {
    let first = request.get("tools")?.as_array()?.first()?;
    let name = first
        .pointer("/function/name")
        .or_else(|| first.get("name"))?
        .as_str()?;
    let messages = request.get("messages")?.as_array()?;
    let answered = messages.iter().any(|m| {
        m.get("role").and_then(Value::as_str) == Some("tool")
            || m.get("content")
                .and_then(Value::as_array)
                .is_some_and(|blocks| {
                    blocks
                        .iter()
                        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                })
    });
    (!answered).then(|| ToolCall {
        id: None,
        name: name.to_string(),
        arguments: json!({}),
    })
}

/// The normal 200 body, with the usage counted as documented: prompt tokens are
/// ceil(chars of every message's content, plus Anthropic's `system`, / 4) and at least 1;
/// completion tokens are ceil(chars of the reply's text / 4).
fn normal_body(
    provider: Provider,
    request: &Value,
    seq: u64,
    content: Option<String>,
    tool_calls: Option<&[ToolCall]>,
) -> Value {
    let empty = Vec::new();
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut prompt_chars: usize = messages
        .iter()
        .map(|m| m.get("content").map_or(0, |c| text_of(c).chars().count()))
        .sum();
    if provider == Provider::Anthropic {
        prompt_chars += request
            .get("system")
            .map_or(0, |s| text_of(s).chars().count());
    }
    // A reply that calls tools has the text it was given, or none (null / no text block).
    let text = match tool_calls {
        Some(_) => content,
        None => Some(content.unwrap_or_else(|| default_text(messages))),
    };
    let prompt_tokens = prompt_chars.div_ceil(4).max(1);
    let completion_tokens = text.as_deref().map_or(0, |t| t.chars().count().div_ceil(4));
    let model = request
        .get("model")
        .cloned()
        .unwrap_or_else(|| json!("stub-model"));
    let calls = tool_calls.unwrap_or_default();
    match provider {
        Provider::OpenAi => {
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut message = json!({"role": "assistant", "content": text});
            if tool_calls.is_some() {
                let wire: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, call)| {
                        json!({
                            "id": call.id.clone().unwrap_or_else(|| format!("call_{seq}_{i}")),
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments.to_string()},
                        })
                    })
                    .collect();
                message["tool_calls"] = Value::Array(wire);
            }
            json!({
                "id": format!("chatcmpl-stub-{seq}"),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": if tool_calls.is_some() { "tool_calls" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            })
        }
        Provider::Anthropic => {
            let text_block = text.map(|text| json!({"type": "text", "text": text}));
            let blocks: Vec<Value> = text_block
                .into_iter()
                .chain(calls.iter().enumerate().map(|(i, call)| {
                    json!({
                        "type": "tool_use",
                        "id": call.id.clone().unwrap_or_else(|| format!("toolu_{seq}_{i}")),
                        "name": call.name,
                        "input": call.arguments,
                    })
                }))
                .collect();
            json!({
                "id": format!("msg_stub_{seq}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": if tool_calls.is_some() { "tool_use" } else { "end_turn" },
                "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
            })
        }
    }
}

/// "stub reply to: " and the start of the last user message.
fn default_text(messages: &[Value]) -> String {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(text_of)
        .unwrap_or_default();
    format!(
        "stub reply to: {}",
        last_user.chars().take(60).collect::<String>()
    )
}

fn usage() -> ! {
    eprintln!("usage: llm_stub [--port N] [--script FILE] [--verbose] [--exit-with-stdin]");
    eprintln!("  --port N           127.0.0.1:N; 0, the default, picks a free port");
    eprintln!("  --script FILE      behaviours queued at start (as POST /_stub/script takes them)");
    eprintln!("  --verbose          one line per request on stderr");
    eprintln!("  --exit-with-stdin  exit when stdin reaches its end (the parent's pipe closed)");
    std::process::exit(2);
}

fn main() {
    let mut port: u16 = 0;
    let mut verbose = false;
    let mut exit_with_stdin = false;
    let mut queue = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exit-with-stdin" => exit_with_stdin = true,
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--script" => {
                let file = args.next().unwrap_or_else(|| usage());
                let read = std::fs::read_to_string(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
                    .and_then(|value: Value| behaviours(&value));
                queue = read.unwrap_or_else(|e| {
                    eprintln!("llm_stub: cannot queue the behaviours of {file}: {e}");
                    std::process::exit(2);
                });
            }
            "--verbose" | "-v" => verbose = true,
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("llm_stub: cannot bind 127.0.0.1:{port}: {e}");
        std::process::exit(1);
    });
    let addr = listener
        .local_addr()
        .expect("local address of the listener");
    {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "listening {addr}");
        let _ = stdout.flush();
    }
    if exit_with_stdin {
        // The parent holds our stdin pipe; when it goes (the parent exited, however), so do we.
        thread::spawn(|| {
            let mut buf = [0u8; 256];
            let mut stdin = io::stdin().lock();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    let server = Arc::new(Server {
        state: Mutex::new(State {
            queue,
            default_delay_ms: 0,
            call_first_tool: false,
            records: Vec::new(),
            next_seq: 1,
        }),
        started: Instant::now(),
        next_conn: AtomicU64::new(0),
        verbose,
    });
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let server = Arc::clone(&server);
                let spawned = thread::Builder::new()
                    .name("llm_stub-conn".into())
                    .spawn(move || handle_connection(server, stream));
                if let Err(e) = spawned {
                    eprintln!("llm_stub: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("llm_stub: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
