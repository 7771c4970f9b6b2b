//! The LLM stub server (`src/bin/llm_stub.rs`) from the tests: start it, script it, read what
//! it received. Plus a minimal HTTP/1.1 client over `std::net::TcpStream`, used for the control
//! API and available to tests that want to talk to the stub (or anything else) directly.
//!
//! Finding the binary: `CARGO_BIN_EXE_llm_stub` is only set when Cargo compiles integration
//! tests, not this library, so [`binary_path`] takes `$LLM_STUB_BIN` when set, and otherwise
//! the `llm_stub` next to the running executable, one directory up when that is a `deps`
//! directory (test executables live in `target/debug/deps`, the stub in `target/debug`).
//! `cargo test -p ai_agents_tests` builds the package's binaries before running its
//! integration tests, so it is there; [`Stub::start_binary`] takes an explicit path.
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A running stub server, killed on drop.
pub struct Stub {
    /// The base URL of both APIs, `http://127.0.0.1:PORT/v1`: OpenAI at
    /// `{base_url}/chat/completions`, Anthropic at `{base_url}/messages`.
    pub base_url: String,
    pub addr: SocketAddr,
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// The stub runs with `--exit-with-stdin`: it exits when this pipe closes, which the
    /// kernel does when this process ends, so a `Stub` that is never dropped (in a static,
    /// say) does not outlive the tests.
    _stdin: ChildStdin,
}

/// Where [`Stub::start`] looks for the `llm_stub` binary; see the module documentation.
pub fn binary_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LLM_STUB_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe
        .parent()
        .expect("directory of the running executable")
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir.join(format!("llm_stub{}", std::env::consts::EXE_SUFFIX))
}

impl Stub {
    /// Starts the stub found by [`binary_path`] on a free port.
    pub fn start() -> Stub {
        Stub::start_binary(&binary_path())
    }

    /// Starts the stub at `binary` on a free port and waits for its `listening` line.
    pub fn start_binary(binary: &Path) -> Stub {
        let mut child = Command::new(binary)
            .args(["--port", "0", "--exit-with-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the LLM stub {}: {e} (build it with `cargo build -p ai_agents_tests --bins`)",
                    binary.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let addr: Option<SocketAddr> = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait();
            panic!("the LLM stub did not say where it listens: read {read:?}, line {line:?}, exit {status:?}");
        };
        Stub {
            base_url: format!("http://{addr}/v1"),
            addr,
            child,
            _stdout: stdout,
            _stdin: stdin,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One request on a fresh connection (`Connection: close`); panics on I/O errors.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http_request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to the LLM stub failed: {e}"))
    }

    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        let response = self.request(method, path, headers, body.as_bytes());
        assert!(
            response.status == 200,
            "{method} {path} to the LLM stub: {} {}",
            response.status,
            response.text()
        );
        response.json()
    }

    /// Appends one behaviour (an object) or several (an array) to the queue.
    pub fn script(&self, behaviour: Value) {
        self.control("POST", "/_stub/script", Some(&behaviour));
    }

    /// The behaviours still queued, as scripted.
    pub fn queued(&self) -> Vec<Value> {
        as_array(self.control("GET", "/_stub/script", None))
    }

    /// The delay of provider requests that no scripted behaviour applies to.
    pub fn set_default_delay_ms(&self, ms: u64) {
        self.control("POST", "/_stub/default", Some(&json!({ "delay_ms": ms })));
    }

    /// Whether requests no behaviour applies to that declare tools, and carry no tool result
    /// yet, get a call of their first tool.
    pub fn set_call_first_tool(&self, on: bool) {
        self.control(
            "POST",
            "/_stub/default",
            Some(&json!({ "call_first_tool": on })),
        );
    }

    /// Every provider request received since the start or the last reset, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        as_array(self.control("GET", "/_stub/requests", None))
    }

    /// Clears the queue, the default delay and the records.
    pub fn reset(&self) {
        self.control("POST", "/_stub/reset", None);
    }
}

fn as_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => panic!("expected a JSON array from the LLM stub, got {other}"),
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read by [`read_response`]. Header names are lowercased.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// Writes one request: the request line, `Host`, the given headers, `Content-Length` when
/// there is a body (or the method is POST/PUT/PATCH), then the body.
pub fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a full response head",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response whose body has a `Content-Length` (as all the stub's do), or runs to the
/// end of the connection when it has none. Skips `100 Continue` interim responses. A body
/// shorter than its `Content-Length` is an `UnexpectedEof` error.
pub fn read_response(reader: &mut impl BufRead) -> io::Result<HttpResponse> {
    loop {
        let status_line = read_line(reader)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader)?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        if status == 100 {
            continue;
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length: {e}"),
                )
            })?;
        let mut body = Vec::new();
        match length {
            Some(length) => {
                reader.by_ref().take(length as u64).read_to_end(&mut body)?;
                if body.len() < length {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body ended after {} of {length} bytes", body.len()),
                    ));
                }
            }
            None => {
                reader.read_to_end(&mut body)?;
            }
        }
        return Ok(HttpResponse {
            status,
            headers,
            body,
        });
    }
}

/// One request on a fresh connection with `Connection: close` and a 30 s read timeout.
pub fn http_request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut all_headers = headers.to_vec();
    all_headers.push(("Connection", "close"));
    write_request(&mut stream, method, path, &all_headers, body)?;
    read_response(&mut BufReader::new(stream))
}
