//! The upstream probe of `diagnose`: connect, TLS and the health path, each
//! reported with the layer that failed (DNS, TCP, TLS, HTTP) and
//! the time taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_config::UpstreamConfig;
use portcullis_policy::Reason;
use portcullis_proxy::body::ForwardBody;
use portcullis_proxy::upstream::UpstreamPool;

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Probes the upstream's first target: DNS + TCP connect, TLS handshake for https,
/// then `GET health_path` through the gateway's own upstream client when set.
/// `Ok((evidence, healthy))`: `healthy` is false when the health path answered
/// with an error status (the gateway would still forward).
pub async fn upstream(pool: &Arc<UpstreamPool>) -> Result<(String, bool), (Reason, String)> {
    let config: &UpstreamConfig = pool.config();
    let Some(target) = config.targets.first() else {
        return Err((
            Reason::UpstreamUnreachable,
            "the upstream has no targets".to_owned(),
        ));
    };
    let authority = target.authority.as_str();
    let host = target.authority.host().trim_matches(['[', ']']).to_owned();
    let port = target
        .authority
        .port_u16()
        .unwrap_or(if target.https { 443 } else { 80 });
    let started = Instant::now();
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err((
                    Reason::UpstreamUnreachable,
                    format!("DNS: cannot resolve {host}: {e}"),
                ));
            }
        };
    let Some(addr) = addrs.first().copied() else {
        return Err((
            Reason::UpstreamUnreachable,
            format!("DNS: {host} has no address"),
        ));
    };
    let stream =
        match tokio::time::timeout(config.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err((
                    Reason::UpstreamUnreachable,
                    format!("TCP: connect to {authority} ({addr}) failed: {e}"),
                ));
            }
            Err(_) => {
                return Err((
                    Reason::UpstreamUnreachable,
                    format!(
                        "TCP: connect to {authority} timed out after {:?}",
                        config.connect_timeout
                    ),
                ));
            }
        };
    let mut evidence = format!(
        "{}://{authority}: TCP {addr} connected in {}",
        target.scheme(),
        ms(started.elapsed())
    );
    // The probe connection is closed before the HTTP probe, so an upstream that
    // serves one connection at a time can still answer it.
    if !target.https {
        drop(stream);
    } else {
        let tls = portcullis_jwks::tls::client_config(config.ca_pem.as_deref())
            .map_err(|e| (Reason::UpstreamUnreachable, format!("TLS: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            (
                Reason::UpstreamUnreachable,
                format!("TLS: bad server name {host}: {e}"),
            )
        })?;
        let started = Instant::now();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        match tokio::time::timeout(config.connect_timeout, connector.connect(name, stream)).await {
            Ok(Ok(_)) => evidence.push_str(&format!(
                "; TLS handshake and certificate verified in {}",
                ms(started.elapsed())
            )),
            Ok(Err(e)) => {
                return Err((
                    Reason::UpstreamUnreachable,
                    format!("TLS: handshake with {authority} failed: {e}"),
                ));
            }
            Err(_) => {
                return Err((
                    Reason::UpstreamUnreachable,
                    format!("TLS: handshake with {authority} timed out"),
                ));
            }
        }
    }
    let Some(path) = &config.health_path else {
        evidence.push_str("; no health_path configured, so no HTTP probe");
        return Ok((evidence, true));
    };
    let request = http::Request::get(path.as_str())
        .body(ForwardBody::empty())
        .map_err(|e| {
            (
                Reason::UpstreamProtocolError,
                format!("bad health_path {path}: {e}"),
            )
        })?;
    match pool
        .send(request, config.response_header_timeout, false, true)
        .await
    {
        Ok((response, latency)) => {
            let status = response.status();
            evidence.push_str(&format!(
                "; GET {path} -> HTTP {} in {}",
                status.as_u16(),
                ms(latency)
            ));
            Ok((
                evidence,
                !(status.is_client_error() || status.is_server_error()),
            ))
        }
        Err(failure) => Err((
            failure.rejection.reason,
            format!("HTTP: GET {path}: {}", failure.rejection.detail),
        )),
    }
}
