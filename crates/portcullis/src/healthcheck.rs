//! `portcullis healthcheck`: a GET against the admin listener for container
//! HEALTHCHECKs, since distroless images carry no curl. Exit 0 on HTTP 200.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Probes `url` (http only) with a 3 s budget.
pub fn main(url: &str) -> ExitCode {
    match probe(url) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("portcullis healthcheck: {url} answered HTTP {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("portcullis healthcheck: {url}: {e}");
            ExitCode::from(1)
        }
    }
}

fn probe(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed")?;
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
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_owned())
}
