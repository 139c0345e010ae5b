//! The HTTPS listener: one TLS handshake (tokio-rustls, with a deadline) and one hyper
//! HTTP/1.1 connection per accepted TCP connection, the TLS peer handed to the router as
//! a [`PeerIdentity`] request extension.
//!
//! A connection that sends garbage, fails its handshake or stalls in it is closed and
//! counted in [`Metrics`]; nothing it does reaches other connections. On shutdown the
//! listener stops accepting, asks every connection to finish its in-flight request
//! ([`GRACE`] at most), then returns.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::extract::PeerIdentity;
use super::metrics::Metrics;
use super::shutdown_signalled;
use crate::pki::agent_id_from_peer_certificates;

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (slow clients are cut off).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish after shutdown was asked for.
pub const GRACE: Duration = Duration::from_secs(5);

/// Serves `router` over TLS on `listener` until `shutdown` turns true (or its sender is
/// dropped), then drains the connections for at most [`GRACE`].
///
/// # Errors
///
/// None in practice: accept errors (too many open files...) are logged and retried.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, addr) = tokio::select! {
            () = shutdown_signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a TCP connection");
                    // Usually out of file descriptors: give in-flight requests a moment.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            stream,
            addr,
            acceptor.clone(),
            router.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still open after the grace period are closed"
        );
        connections.abort_all();
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            match classify(&error) {
                Failure::Garbage => metrics.garbage_connection(),
                Failure::Refused(reason) => metrics.refused_connection(reason),
            }
            tracing::debug!(peer = %addr, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.refused_connection("timeout");
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let agent_id = match agent_id_from_peer_certificates(tls.get_ref().1.peer_certificates()) {
        Ok(id) => id,
        Err(error) => {
            // The verifier already required the identity; this is a belt and braces.
            metrics.refused_connection("certificate");
            tracing::debug!(peer = %addr, %error, "client certificate without an agent id");
            return;
        }
    };
    let peer = PeerIdentity { addr, agent_id };
    let service = router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = shutdown_signalled(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "HTTP connection ended with an error");
    }
}

enum Failure {
    Garbage,
    Refused(&'static str),
}

fn classify(error: &io::Error) -> Failure {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::DecryptError => Failure::Garbage,
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_) => Failure::Refused("certificate"),
            _ => Failure::Refused("tls"),
        };
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof => Failure::Refused("eof"),
        io::ErrorKind::InvalidData => Failure::Garbage,
        _ => Failure::Refused("io"),
    }
}
