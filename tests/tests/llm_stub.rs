//! The LLM stub server itself: both providers' normal replies and usage numbers, scripted
//! errors, `match`, tool calls (scripted and automatic), verbatim and truncated bodies,
//! hanging and dripping answers, delays under concurrency, header redaction, keep-alive,
//! chunked and `Expect: 100-continue` uploads, the control API, and shutdown. Each test
//! starts a stub of its own.
use ai_agents_tests::stub::{binary_path, read_response, write_request, HttpResponse, Stub};
use serde_json::{json, Value};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

fn openai(stub: &Stub, body: &Value) -> HttpResponse {
    stub.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer sk-test"),
        ],
        body.to_string().as_bytes(),
    )
}

fn anthropic(stub: &Stub, body: &Value) -> HttpResponse {
    stub.request(
        "POST",
        "/v1/messages",
        &[
            ("Content-Type", "application/json"),
            ("x-api-key", "sk-ant-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string().as_bytes(),
    )
}

fn chat(user: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": user}]})
}

fn reply_text(response: &HttpResponse) -> String {
    let body = response.json();
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .or_else(|| body["content"][0]["text"].as_str());
    text.unwrap_or_else(|| panic!("no reply text in {body}"))
        .to_string()
}

#[test]
fn the_library_finds_the_binary_cargo_built() {
    let expected = std::fs::canonicalize(env!("CARGO_BIN_EXE_llm_stub")).unwrap();
    assert_eq!(std::fs::canonicalize(binary_path()).unwrap(), expected);
    let stub = Stub::start();
    assert_eq!(
        stub.base_url,
        format!("http://127.0.0.1:{}/v1", stub.port())
    );
}

#[test]
fn openai_normal_reply_and_usage() {
    let stub = Stub::start();
    let user =
        "Summarise the quarterly report for the board, in three bullet points please, short ones.";
    let system = "You are terse.";
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let response = openai(
        &stub,
        &json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": user},
        ]}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    let seq = stub.requests()[0]["seq"].as_u64().unwrap();
    assert_eq!(body["id"], format!("chatcmpl-stub-{seq}"));
    assert_eq!(
        response.header("x-request-id"),
        Some(format!("req-stub-{seq}").as_str())
    );
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["created"].as_u64().unwrap() >= before);
    let text = format!("stub reply to: {}", &user[..60]);
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let chars = system.len() + "an earlier question".len() + "an earlier answer".len() + user.len();
    let (p, c) = (chars.div_ceil(4), text.len().div_ceil(4));
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
    );

    // Content parts count by their text; one character still costs a token.
    let response = openai(
        &stub,
        &json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "é"}]}]}),
    );
    let body = response.json();
    assert_eq!(body["choices"][0]["message"]["content"], "stub reply to: é");
    assert_eq!(body["usage"]["prompt_tokens"], 1);
    assert_eq!(
        body["usage"]["completion_tokens"],
        "stub reply to: é".chars().count().div_ceil(4)
    );
    let seq2 = stub.requests()[1]["seq"].as_u64().unwrap();
    assert_eq!(seq2, seq + 1);
    assert_eq!(body["id"], format!("chatcmpl-stub-{seq2}"));
}

#[test]
fn anthropic_normal_reply_and_usage() {
    let stub = Stub::start();
    let system = "You answer in French.";
    let user = "What is the capital of Italy?";
    let response = anthropic(
        &stub,
        &json!({"model": "claude-3-5-haiku", "max_tokens": 100, "system": system, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": user},
        ]}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let seq = stub.requests()[0]["seq"].as_u64().unwrap();
    assert_eq!(body["id"], format!("msg_stub_{seq}"));
    assert_eq!(
        response.header("request-id"),
        Some(format!("req-stub-{seq}").as_str())
    );
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-3-5-haiku");
    assert_eq!(body["stop_reason"], "end_turn");
    let text = format!("stub reply to: {user}");
    assert_eq!(body["content"], json!([{"type": "text", "text": text}]));
    let chars = system.len() + "Hi!".len() + "Bonjour".len() + user.len();
    assert_eq!(
        body["usage"],
        json!({"input_tokens": chars.div_ceil(4), "output_tokens": text.len().div_ceil(4)})
    );
}

#[test]
fn scripted_usage_is_set_over_the_counted_usage() {
    let stub = Stub::start();
    stub.script(json!([
        {"usage": {"prompt_tokens": 2006, "prompt_tokens_details": {"cached_tokens": 1920}}},
        {"usage": {"cache_read_input_tokens": 3000, "output_tokens": 7}}
    ]));
    let usage = openai(&stub, &chat("hello there")).json()["usage"].clone();
    assert_eq!(usage["prompt_tokens"], 2006);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 1920);
    // Fields not scripted keep their counted values.
    assert_eq!(
        usage["completion_tokens"],
        "stub reply to: hello there".len().div_ceil(4)
    );
    let usage = anthropic(&stub, &chat("hi")).json()["usage"].clone();
    assert_eq!(
        usage,
        json!({"input_tokens": 1, "output_tokens": 7, "cache_read_input_tokens": 3000})
    );
    let refused = stub.request(
        "POST",
        "/_stub/script",
        &[("Content-Type", "application/json")],
        br#"{"usage": 5}"#,
    );
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["error"]["message"],
        "behaviour field \"usage\" must be an object, not 5"
    );
}

#[test]
fn scripted_429_with_retry_after_then_normal() {
    let stub = Stub::start();
    stub.script(json!({"status": 429, "retry_after": "7", "error_type": "rate_limit_exceeded"}));
    stub.script(json!([{"status": 429, "retry_after": "2"}, {"status": 529}]));
    assert_eq!(stub.queued().len(), 3);

    let response = openai(&stub, &chat("one"));
    assert_eq!(response.status, 429);
    assert_eq!(response.header("Retry-After"), Some("7"));
    assert_eq!(
        response.json(),
        json!({"error": {"message": "stub error", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}})
    );
    assert!(response.header("x-request-id").is_some());

    let response = anthropic(&stub, &chat("two"));
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("2"));
    assert_eq!(
        response
            .headers
            .iter()
            .filter(|(n, _)| n == "retry-after")
            .count(),
        1
    );
    assert_eq!(
        response.json(),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "stub error"}})
    );

    let response = anthropic(&stub, &chat("three"));
    assert_eq!(response.status, 529);
    assert_eq!(response.header("retry-after"), None);
    assert_eq!(response.json()["error"]["type"], "overloaded_error");

    // The queue is empty again: back to normal replies.
    let response = openai(&stub, &chat("four"));
    assert_eq!(response.status, 200);
    assert_eq!(reply_text(&response), "stub reply to: four");
    let applied: Vec<Value> = stub
        .requests()
        .iter()
        .map(|r| r["behaviour"].clone())
        .collect();
    assert_eq!(applied[0]["status"], 429);
    assert_eq!(applied[2]["status"], 529);
    assert_eq!(applied[3], Value::Null);
}

#[test]
fn match_targets_its_own_request_and_others_stay_queued() {
    let stub = Stub::start();
    stub.script(json!([
        {"match": "task-B", "content": "only for B"},
        {"match": "task-C", "status": 500},
        {"content": "first unmatched"},
        {"content": "second unmatched"},
    ]));
    // The unmatched behaviours go, in order, to requests no matched one applies to.
    assert_eq!(
        reply_text(&openai(&stub, &chat("task-A"))),
        "first unmatched"
    );
    assert_eq!(reply_text(&anthropic(&stub, &chat("task-B"))), "only for B");
    assert_eq!(
        reply_text(&openai(&stub, &chat("task-A again"))),
        "second unmatched"
    );
    assert_eq!(
        reply_text(&openai(&stub, &chat("task-A once more"))),
        "stub reply to: task-A once more"
    );
    assert_eq!(
        stub.queued(),
        vec![json!({"match": "task-C", "status": 500})]
    );
    let response = openai(&stub, &chat("this is task-C"));
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["error"]["type"], "server_error");
    assert!(stub.queued().is_empty());
}

#[test]
fn verbatim_malformed_body_and_malformed_requests() {
    let stub = Stub::start();
    stub.script(json!({"body": "{\"choices\": [", "status": 200}));
    let response = openai(&stub, &chat("x"));
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "{\"choices\": [");
    assert_eq!(response.header("content-length"), Some("13"));

    stub.script(json!({"body": "<html>bad gateway</html>", "status": 502}));
    let response = anthropic(&stub, &chat("y"));
    assert_eq!(response.status, 502);
    assert_eq!(response.text(), "<html>bad gateway</html>");

    // A request that is not JSON gets a 400, is recorded, and leaves the queue alone.
    stub.script(json!({"content": "kept"}));
    let response = stub.request("POST", "/v1/chat/completions", &[], b"{not json");
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    let records = stub.requests();
    let last = records.last().unwrap();
    assert_eq!(last["body"], Value::Null);
    assert_eq!(last["raw_body"], "{not json");
    assert_eq!(stub.queued().len(), 1);

    // A broken control request is refused and queues nothing.
    let response = stub.request(
        "POST",
        "/_stub/script",
        &[],
        br#"[{"content": "a"}, {"stauts": 500}]"#,
    );
    assert_eq!(response.status, 400);
    assert!(response.text().contains("stauts"), "{}", response.text());
    assert_eq!(stub.queued().len(), 1);
}

#[test]
fn truncate_sends_part_of_the_body_and_closes() {
    let stub = Stub::start();
    stub.script(json!({"truncate": true}));
    let mut stream = TcpStream::connect(stub.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write_request(
        &mut stream,
        "POST",
        "/v1/chat/completions",
        &[],
        chat("cut").to_string().as_bytes(),
    )
    .unwrap();
    // The server closes the connection: reading runs to the end, no timeout.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let declared: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        !body.is_empty() && body.len() < declared,
        "{} of {declared}",
        body.len()
    );
    assert!(serde_json::from_str::<Value>(body).is_err());

    // The module's reader reports it as an early end.
    stub.script(json!({"truncate": true}));
    let mut stream = TcpStream::connect(stub.addr).unwrap();
    write_request(
        &mut stream,
        "POST",
        "/v1/messages",
        &[],
        chat("cut").to_string().as_bytes(),
    )
    .unwrap();
    let error = read_response(&mut BufReader::new(stream)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
}

#[test]
fn hang_never_answers() {
    let stub = Stub::start();
    stub.script(json!({"hang": true}));
    let mut stream = TcpStream::connect(stub.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    write_request(
        &mut stream,
        "POST",
        "/v1/chat/completions",
        &[],
        chat("wait").to_string().as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let error = stream
        .read(&mut buf)
        .expect_err("the stub answered a hanging request");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The hanging request is recorded, and other connections are served meanwhile.
    assert_eq!(stub.requests()[0]["behaviour"], json!({"hang": true}));
    assert_eq!(openai(&stub, &chat("next")).status, 200);
    // Still open and silent.
    let error = stream
        .read(&mut buf)
        .expect_err("the stub answered a hanging request");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error:?}"
    );
}

#[test]
fn drip_sends_the_body_slowly() {
    let stub = Stub::start();
    stub.script(json!({"drip_ms": 3}));
    let started = Instant::now();
    let response = anthropic(&stub, &chat("slowly"));
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(reply_text(&response), "stub reply to: slowly");
    let minimum = Duration::from_millis(3 * (response.body.len() as u64 - 1));
    assert!(elapsed >= minimum, "{elapsed:?} < {minimum:?}");
}

fn concurrent_requests(stub: &Stub, n: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let addr = stub.addr;
            thread::spawn(move || {
                let t = Instant::now();
                let response = ai_agents_tests::stub::http_request(
                    addr,
                    "POST",
                    if i % 2 == 0 {
                        "/v1/chat/completions"
                    } else {
                        "/v1/messages"
                    },
                    &[],
                    chat(&format!("request {i}")).to_string().as_bytes(),
                )
                .unwrap();
                assert_eq!(response.status, 200);
                t.elapsed()
            })
        })
        .collect();
    let each = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (started.elapsed(), each)
}

#[test]
fn scripted_delays_run_concurrently() {
    let stub = Stub::start();
    stub.script(Value::Array(vec![json!({"delay_ms": 500}); 8]));
    let (total, each) = concurrent_requests(&stub, 8);
    assert!(
        each.iter().all(|d| *d >= Duration::from_millis(500)),
        "{each:?}"
    );
    assert!(
        total < Duration::from_millis(1250),
        "8 delayed requests took {total:?}"
    );
    assert!(stub.queued().is_empty());
}

#[test]
fn default_delay_with_32_connections() {
    let stub = Stub::start();
    stub.set_default_delay_ms(500);
    let (total, each) = concurrent_requests(&stub, 32);
    assert!(
        each.iter().all(|d| *d >= Duration::from_millis(500)),
        "{each:?}"
    );
    assert!(
        total < Duration::from_millis(1500),
        "32 delayed requests took {total:?}"
    );
    // A scripted delay replaces the default one; reset clears it.
    stub.script(json!({"delay_ms": 0}));
    let started = Instant::now();
    assert_eq!(openai(&stub, &chat("quick")).status, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    stub.reset();
    let started = Instant::now();
    assert_eq!(openai(&stub, &chat("quick")).status, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[test]
fn records_redact_keys_and_keep_the_rest() {
    let stub = Stub::start();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "secret-free"}]});
    let response = stub.request(
        "POST",
        "/v1/chat/completions?api-version=1",
        &[
            ("Authorization", "Bearer sk-live-abcdef123456"),
            ("X-Custom", "one"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200);
    anthropic(&stub, &chat("hi"));
    let records = stub.requests();
    assert_eq!(records.len(), 2);
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains("sk-live-abcdef123456") && !all.contains("sk-ant-test"),
        "{all}"
    );

    let first = &records[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions?api-version=1");
    assert_eq!(first["headers"]["authorization"], "<redacted:len=27>");
    assert_eq!(first["headers"]["x-custom"], "one");
    assert_eq!(first["body"], body);
    assert!(first["received_ms"].is_u64());
    let second = &records[1];
    assert_eq!(second["path"], "/v1/messages");
    assert_eq!(second["headers"]["x-api-key"], "<redacted:len=11>");
    assert_eq!(second["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(
        second["seq"].as_u64().unwrap(),
        first["seq"].as_u64().unwrap() + 1
    );
    assert!(second["received_ms"].as_u64() >= first["received_ms"].as_u64());

    // Control requests and unknown paths are not recorded; unknown paths get a JSON 404.
    let response = stub.request("GET", "/v1/models", &[], b"");
    assert_eq!(response.status, 404);
    assert!(response.json()["error"]["message"].is_string());
    assert_eq!(stub.requests().len(), 2);
    stub.reset();
    assert!(stub.requests().is_empty());
}

#[test]
fn keep_alive_serves_several_requests_per_connection() {
    let stub = Stub::start();
    let stream = TcpStream::connect(stub.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for (path, text) in [
        ("/v1/chat/completions", "first"),
        ("/v1/messages", "second"),
    ] {
        write_request(
            &mut writer,
            "POST",
            path,
            &[],
            chat(text).to_string().as_bytes(),
        )
        .unwrap();
        let response = read_response(&mut reader).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert_eq!(reply_text(&response), format!("stub reply to: {text}"));
    }
    // Pipelined: two requests written at once, two answers in order.
    let mut both = Vec::new();
    write_request(
        &mut both,
        "POST",
        "/v1/chat/completions",
        &[],
        chat("third").to_string().as_bytes(),
    )
    .unwrap();
    write_request(&mut both, "GET", "/v1/nothing", &[], b"").unwrap();
    writer.write_all(&both).unwrap();
    assert_eq!(
        reply_text(&read_response(&mut reader).unwrap()),
        "stub reply to: third"
    );
    assert_eq!(read_response(&mut reader).unwrap().status, 404);
    // Connection: close is honoured.
    write_request(
        &mut writer,
        "POST",
        "/v1/messages",
        &[("Connection", "close")],
        chat("last").to_string().as_bytes(),
    )
    .unwrap();
    let response = read_response(&mut reader).unwrap();
    assert_eq!(response.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);

    let records = stub.requests();
    assert_eq!(records.len(), 4);
    assert!(
        records.iter().all(|r| r["conn"] == records[0]["conn"]),
        "{records:?}"
    );
}

#[test]
fn chunked_and_expect_continue_uploads() {
    let stub = Stub::start();
    let body = chat("chunky").to_string();
    let (a, b) = body.split_at(10);
    let mut stream = TcpStream::connect(stub.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(
        reply_text(&read_response(&mut reader).unwrap()),
        "stub reply to: chunky"
    );

    // Expect: 100-continue (curl sends it for large bodies): the body only after the 100.
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line, "\r\n");
    stream.write_all(body.as_bytes()).unwrap();
    let response = read_response(&mut reader).unwrap();
    assert_eq!(reply_text(&response), "stub reply to: chunky");
}

#[test]
fn shutdown_stops_the_server() {
    let stub = Stub::start();
    let response = stub.request("POST", "/_stub/shutdown", &[], b"");
    assert_eq!(response.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(stub.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the stub still accepts connections after shutdown"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exit_with_stdin_ends_the_stub_with_its_parent() {
    let mut child = std::process::Command::new(binary_path())
        .args(["--port", "0", "--exit-with-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    assert!(line.starts_with("listening 127.0.0.1:"), "{line:?}");
    assert!(child.try_wait().unwrap().is_none());
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the stub outlived its stdin");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scripted_tool_calls_and_the_automatic_first_tool_in_both_formats() {
    let stub = Stub::start();
    stub.script(json!({"match": "scripted", "content": "looking",
                       "tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"q": 1}}]}));
    let scripted = openai(&stub, &chat("scripted")).json();
    let message = &scripted["choices"][0]["message"];
    assert_eq!(message["content"], "looking");
    assert_eq!(message["tool_calls"][0]["id"], "c1");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        "{\"q\":1}"
    );
    assert_eq!(scripted["choices"][0]["finish_reason"], "tool_calls");

    // Automatic: a request declaring tools with no result yet gets a call of the first one.
    stub.set_call_first_tool(true);
    let tools = json!([{"type": "function", "function": {"name": "first", "parameters": {}}},
                       {"type": "function", "function": {"name": "second", "parameters": {}}}]);
    let mut asked = chat("automatic");
    asked["tools"] = tools.clone();
    let call = openai(&stub, &asked).json();
    assert_eq!(
        call["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "first"
    );
    assert_eq!(
        call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    asked["messages"] = json!([{"role": "user", "content": "automatic"},
                               {"role": "assistant", "content": null, "tool_calls": []},
                               {"role": "tool", "tool_call_id": "x", "content": "{}"}]);
    assert!(reply_text(&openai(&stub, &asked)).starts_with("stub reply to:"));
    // Without tools, a plain reply as ever.
    assert!(reply_text(&openai(&stub, &chat("no tools"))).starts_with("stub reply to:"));
    let mut anthropic_asked = json!({"model": "claude-3-5-haiku-latest", "max_tokens": 10,
        "messages": [{"role": "user", "content": "automatic"}],
        "tools": [{"name": "first", "input_schema": {}}]});
    let call = anthropic(&stub, &anthropic_asked).json();
    assert_eq!(call["content"][0]["type"], "tool_use");
    assert_eq!(call["content"][0]["name"], "first");
    assert_eq!(call["stop_reason"], "tool_use");
    anthropic_asked["messages"] = json!([{"role": "user", "content": "automatic"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "first", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "{}"}]}]);
    assert!(reply_text(&anthropic(&stub, &anthropic_asked)).starts_with("stub reply to:"));
    // Off again after a reset.
    stub.reset();
    assert!(reply_text(&openai(&stub, &asked)).starts_with("stub reply to:"));
    let mut first_again = chat("automatic");
    first_again["tools"] = tools;
    assert!(reply_text(&openai(&stub, &first_again)).starts_with("stub reply to:"));
}
