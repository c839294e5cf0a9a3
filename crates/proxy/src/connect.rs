//! Dialling an upstream target: DNS, TCP (no Nagle, keep-alive probes), TLS with
//! ALPN for `https` targets, then the HTTP/1.1 or HTTP/2 handshake. The connection
//! itself runs as its own task; what comes back is the handle that sends requests
//! on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_config::Target;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::ForwardBody;

/// How long the kernel waits on an idle upstream connection before probing it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The request side of an open upstream connection.
pub enum Sender {
    /// An HTTP/1.1 connection: one request at a time, pooled between requests.
    Http1(http1::SendRequest<ForwardBody>),
    /// An HTTP/2 connection: shared by concurrent requests.
    Http2(http2::SendRequest<ForwardBody>),
}

/// Why a connection could not be opened; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// Opens connections to one upstream's targets with one TLS configuration.
pub struct Dialer {
    tls: TlsConnector,
    http2: bool,
    connect_timeout: Duration,
}

impl Dialer {
    /// A dialer; `http2` offers h2 by ALPN over TLS and speaks it by prior
    /// knowledge over plain TCP.
    pub fn new(mut tls: rustls::ClientConfig, http2: bool, connect_timeout: Duration) -> Self {
        tls.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Dialer {
            tls: TlsConnector::from(Arc::new(tls)),
            http2,
            connect_timeout,
        }
    }

    /// Connects to `target` and performs the HTTP handshake.
    pub async fn dial(&self, target: &Target) -> Result<Sender, ConnectError> {
        let tcp = self.tcp(target).await?;
        if !target.https {
            return handshake(tcp, self.http2).await;
        }
        let host = target.authority.host().trim_matches(['[', ']']).to_owned();
        let name = ServerName::try_from(host)
            .map_err(|e| ConnectError(format!("bad TLS server name: {e}")))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError("TLS handshake timed out".to_owned()))?
            .map_err(|e| ConnectError(format!("TLS handshake failed: {e}")))?;
        let h2 = self.http2 && tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        handshake(tls, h2).await
    }

    /// Resolves the target and connects to the first address that answers.
    async fn tcp(&self, target: &Target) -> Result<TcpStream, ConnectError> {
        let host = target.authority.host().trim_matches(['[', ']']);
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if target.https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError(format!("dns error: cannot resolve {host}: {e}")))?
            .collect();
        let mut last = ConnectError(format!("dns error: {host} has no address"));
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Best effort: a socket without these options still works.
                    let _ = stream.set_nodelay(true);
                    let _ = socket2::SockRef::from(&stream)
                        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
                    return Ok(stream);
                }
                Ok(Err(e)) => last = ConnectError(format!("tcp connect error: {addr}: {e}")),
                Err(_) => {
                    last = ConnectError(format!(
                        "tcp connect error: {addr}: timed out after {:?}",
                        self.connect_timeout
                    ))
                }
            }
        }
        Err(last)
    }
}

/// Runs the HTTP handshake on an open transport and spawns the connection task.
async fn handshake<T>(io: T, h2: bool) -> Result<Sender, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| ConnectError(format!("HTTP/2 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(
                    error = e.to_string().as_str(),
                    "upstream HTTP/2 connection ended"
                );
            }
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ConnectError(format!("HTTP/1.1 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(
                    error = e.to_string().as_str(),
                    "upstream HTTP/1.1 connection ended"
                );
            }
        });
        Ok(Sender::Http1(sender))
    }
}
