//! The HTTP exchange (ureq 3): one POST, the status, headers and at most 10 MB of body.
//! Network problems become transient [`Failure`]s without an HTTP status.
use std::io::{self, Read};

use super::classify::{fmt_duration, request_id, retry_after};
use super::{Failure, Provider, Timeouts, MAX_BODY_BYTES};

/// What came back.
pub(super) struct RawResponse {
    pub status: u16,
    /// (lower-case name, value); values that are not visible ASCII are left out.
    pub headers: Vec<(String, String)>,
    /// At most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_BODY_BYTES`] (reading stopped one byte past it).
    pub truncated: bool,
}

/// This thread's agent for these timeouts: kept so that calls from one thread reuse their
/// connections (keep-alive), rebuilt when the timeouts change. Agents are not shared between
/// threads, so no state is.
fn agent(timeouts: Timeouts) -> ureq::Agent {
    thread_local! {
        static AGENT: std::cell::RefCell<Option<((std::time::Duration, std::time::Duration), ureq::Agent)>> =
            const { std::cell::RefCell::new(None) };
    }
    let key = (timeouts.connect, timeouts.total);
    AGENT.with_borrow_mut(|cached| {
        if cached.as_ref().is_none_or(|(k, _)| *k != key) {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_connect(Some(timeouts.connect))
                .timeout_global(Some(timeouts.total))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into();
            *cached = Some((key, agent));
        }
        cached
            .as_ref()
            .map(|(_, agent)| agent.clone())
            .expect("set above")
    })
}

/// POSTs `body` to `url` with this thread's agent. Redirects are not followed (a 3xx comes back as a response); 4xx and 5xx come back as
/// responses too. Proxies are taken from the usual environment variables (`HTTPS_PROXY`,
/// `ALL_PROXY`, `NO_PROXY`, ...) as ureq does by default.
pub(super) fn post(
    provider: Provider,
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    timeouts: Timeouts,
) -> Result<RawResponse, Failure> {
    let host = host_of(url);
    let mut request = agent(timeouts).post(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = request
        .send(body)
        .map_err(|e| transport_failure(provider, host, &e, timeouts, None))?;

    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();

    let mut bytes = Vec::new();
    let read = body
        .into_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut bytes);
    if let Err(e) = read {
        // Without the body a reply is lost, so a 2xx becomes a transport failure. An error
        // status still says enough to classify the failure, with whatever body arrived.
        if (200..300).contains(&status) {
            let mut failure = transport_failure(
                provider,
                host,
                &ureq::Error::from(e),
                timeouts,
                Some(status),
            );
            failure.request_id = request_id(provider, &headers);
            failure.retry_after = retry_after(&headers);
            return Err(failure);
        }
    }
    let truncated = bytes.len() > MAX_BODY_BYTES;
    bytes.truncate(MAX_BODY_BYTES);
    Ok(RawResponse {
        status,
        headers,
        body: bytes,
        truncated,
    })
}

/// A failure for a request that got no (complete) response. `reading_body` is the status
/// when the headers had arrived and the body could not be read.
fn transport_failure(
    provider: Provider,
    host: &str,
    error: &ureq::Error,
    timeouts: Timeouts,
    reading_body: Option<u16>,
) -> Failure {
    let (what, permanent) = describe(error, timeouts);
    let message = match reading_body {
        None => format!("{provider} request to {host} failed: {what}"),
        Some(status) => format!(
            "{provider} request to {host} failed while reading the body of the HTTP {status} response: {what}"
        ),
    };
    Failure {
        message,
        http_status: None,
        retry_after: None,
        permanent,
        request_id: None,
    }
}

/// What went wrong, in words, and whether it is permanent: only errors in the request
/// itself (a URL or header ureq cannot use) are; every network problem is transient.
pub(super) fn describe(error: &ureq::Error, timeouts: Timeouts) -> (String, bool) {
    use ureq::Error as E;
    let transient = |what: String| (what, false);
    match error {
        E::Timeout(ureq::Timeout::Connect) => transient(format!(
            "connecting timed out after {}",
            fmt_duration(timeouts.connect)
        )),
        E::Timeout(ureq::Timeout::Global) => transient(format!(
            "timed out after {} (total timeout)",
            fmt_duration(timeouts.total)
        )),
        E::Timeout(other) => transient(format!("timed out ({other:?})")),
        E::Io(e) => transient(describe_io(e)),
        E::HostNotFound => transient("could not resolve the host name (DNS)".to_string()),
        E::ConnectionFailed => transient("could not connect".to_string()),
        E::Protocol(e) => transient(format!("invalid HTTP response ({e})")),
        E::LargeResponseHeader(..) => transient("the response headers are too large".to_string()),
        E::Tls(e) => transient(format!("TLS error: {e}")),
        E::ConnectProxyFailed(e) => transient(format!("the proxy refused to connect: {e}")),
        E::BadUri(_) => ("invalid URL; check base_url".to_string(), true),
        E::Http(e) => (format!("invalid request ({e})"), true),
        E::InvalidProxyUrl => ("invalid proxy URL in the environment".to_string(), true),
        E::RequireHttpsOnly(_) => ("https is required".to_string(), true),
        other => transient(other.to_string()),
    }
}

fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by the server",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "connection broken (broken pipe)",
        K::NotConnected => "not connected",
        K::UnexpectedEof => "the server closed the connection before the response was complete",
        K::TimedOut | K::WouldBlock => "timed out",
        K::AddrNotAvailable => "address not available",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::NetworkDown => "network down",
        _ if e.to_string().contains("lookup address") => {
            // std's resolver reports a failed lookup as an uncategorised I/O error.
            return format!("could not resolve the host name (DNS: {e})");
        }
        _ => return format!("I/O error: {e}"),
    };
    match e.raw_os_error() {
        Some(code) => format!("{what} (os error {code})"),
        None => format!("{what} ({e})"),
    }
}

/// `host[:port]` of a URL, without any `user:password@`, for messages.
pub(super) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        total: Duration::from_secs(30),
    };

    #[test]
    fn hosts_for_messages() {
        assert_eq!(
            host_of("https://api.openai.com/v1/chat/completions"),
            "api.openai.com"
        );
        assert_eq!(
            host_of("http://127.0.0.1:8089/v1/messages"),
            "127.0.0.1:8089"
        );
        assert_eq!(
            host_of("https://user:pw@example.com:8443?x=1"),
            "example.com:8443"
        );
        assert_eq!(host_of("https://example.com#frag"), "example.com");
        assert_eq!(host_of("nonsense"), "nonsense");
    }

    #[test]
    fn transport_errors_are_described() {
        let cases: Vec<(ureq::Error, &str, bool)> = vec![
            (
                ureq::Error::Timeout(ureq::Timeout::Global),
                "timed out after 30s (total timeout)",
                false,
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::Connect),
                "connecting timed out after 5s",
                false,
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::RecvBody),
                "timed out (RecvBody)",
                false,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionRefused).into(),
                "connection refused",
                false,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset).into(),
                "connection reset",
                false,
            ),
            (
                io::Error::from(io::ErrorKind::UnexpectedEof).into(),
                "closed the connection",
                false,
            ),
            (io::Error::other("weird").into(), "I/O error: weird", false),
            (
                io::Error::other("failed to lookup address information: Name or service not known")
                    .into(),
                "could not resolve the host name (DNS: failed to lookup",
                false,
            ),
            (
                ureq::Error::HostNotFound,
                "could not resolve the host name",
                false,
            ),
            (ureq::Error::ConnectionFailed, "could not connect", false),
            (
                ureq::Error::Tls("bad certificate"),
                "TLS error: bad certificate",
                false,
            ),
            (
                ureq::Error::BadUri("http://[oops".into()),
                "invalid URL; check base_url",
                true,
            ),
        ];
        for (error, expected, permanent) in cases {
            let (what, perm) = describe(&error, T);
            assert!(what.contains(expected), "{what:?} lacks {expected:?}");
            assert_eq!(perm, permanent, "{what}");
        }
    }

    #[test]
    fn body_read_failures_have_no_status() {
        let f = transport_failure(
            Provider::OpenAi,
            "h",
            &ureq::Error::Timeout(ureq::Timeout::Global),
            T,
            Some(200),
        );
        assert_eq!(
            f.message,
            "openai request to h failed while reading the body of the HTTP 200 response: timed out after 30s (total timeout)"
        );
        assert_eq!(f.http_status, None);
        assert!(!f.permanent);
    }
}
