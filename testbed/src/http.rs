//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, enough to probe
//! the test app and to ask the registry for `/v2/` and manifest digests. One
//! request per connection (`Connection: close`), plain HTTP only.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The default connect/read/write timeout of [`request`].
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response [`request`] reads (the test app and registry answers are tiny).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET http://{addr}{path}`.
pub fn get(addr: &str, path: &str) -> Result<Response> {
    request("GET", addr, path, &[])
}

/// Sends one request to `addr` (`host:port`) and reads the whole response.
/// `headers` are added after `Host`, `User-Agent` and `Connection: close`.
pub fn request(method: &str, addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request_with_timeout(method, addr, path, headers, TIMEOUT)
}

/// [`request`] with an explicit connect/read/write timeout.
pub fn request_with_timeout(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let what = || format!("{method} http://{addr}{path}");
    let sockaddr = addr
        .to_socket_addrs()
        .with_context(|| format!("{}: bad address", what()))?
        .next()
        .with_context(|| format!("{}: address resolves to nothing", what()))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout).with_context(what)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wharf-testbed\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).with_context(what)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(what)?;
    parse_response(&raw, method == "HEAD").with_context(what)
}

/// Parses a complete response (the connection was closed by the server).
pub fn parse_response(raw: &[u8], head_only: bool) -> Result<Response> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("response without a complete head ({} bytes)", raw.len());
    };
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .with_context(|| format!("bad status line {status_line:?}"))?,
        _ => bail!("bad status line {status_line:?}"),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    if head_only {
        return Ok(response);
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = response.header("Content-Length") {
        let length: usize = length.parse().context("bad Content-Length")?;
        if rest.len() < length {
            bail!(
                "body shorter than Content-Length ({} < {length})",
                rest.len()
            );
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size line")?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Whether an error from [`request`] means nothing is listening yet (connection
/// refused or reset), as opposed to a real failure.
pub fn is_not_listening(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nok\nextra",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
        assert_eq!(r.header("x-a"), Some("b"));

        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.text(), "abcde");

        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 10\r\n\r\n",
            true,
        )
        .unwrap();
        assert_eq!((r.status, r.body.len()), (401, 0));

        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false).is_err());
        assert!(parse_response(b"SPDY 200 OK\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
    }
}
