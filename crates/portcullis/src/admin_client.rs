//! A minimal blocking HTTP/1.1 client for the admin listener (plain http on a
//! trusted network), used by `healthcheck` and `explain`: distroless images
//! carry no curl, and these commands must not pull in a TLS client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The most of a response body read (an explain document is a few KiB).
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A response: status and body.
pub struct AdminResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body (bounded by [`MAX_RESPONSE_BYTES`]).
    pub body: String,
}

/// GETs `url` (http only) with a 3 s budget, sending `headers` (`Name: value`).
pub fn get(url: &str, headers: &[String]) -> Result<AdminResponse, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or("not an HTTP response")?;
    Ok(AdminResponse {
        status,
        body: body.to_owned(),
    })
}
