//! A **scripted core**: a QUIC listener with core's mutual-TLS configuration (core's PKI
//! helpers, no core process) on which a test plays core's part of `wharf/1` message by
//! message. For the protocol corners a real core never produces on purpose: the same
//! `Assign` twice, an `Assign` already expired, two tasks for one target at once, a
//! result never acknowledged.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use wharf_testbed::fake_core::FakeCore;
//!
//! let core = FakeCore::start()?;
//! let identity = core.issue("agent-1")?; // what enrollment would give
//! // ... start an agent with `identity` against `core.core_addr()` ...
//! let mut session = core.accept().await?; // reads its Hello
//! session.welcome(Duration::from_millis(100)).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use uuid::Uuid;
use wharf_core::pki::{
    generate_agent_key_and_csr, mtls_server_config, AgentKeyRequest, CertificateAuthority,
    RevocationList, SecretString, TlsIdentity, ALPN_WHARF,
};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{
    read_frame, write_frame, AgentTask, DurationMs, Hello, Limits, Message, Priority, ResultAck,
    TaskPayload, TaskResult, Timestamp, Welcome, DEFAULT_MAX_FRAME,
};

use crate::simagent::Enrolled;

/// How long the scripted core waits for anything from the agent.
pub const FAKE_CORE_WAIT: Duration = Duration::from_secs(20);

const MAX: u32 = DEFAULT_MAX_FRAME;

/// A task as core would assign it: a fresh id, attempt 1, 60 s timeout, normal priority,
/// no credentials, no expiry, requested by `test`.
pub fn task(payload: TaskPayload, target: &str) -> AgentTask {
    AgentTask {
        id: Uuid::new_v4(),
        target: target.into(),
        payload,
        credentials: None,
        timeout: DurationMs::from_secs(60),
        priority: Priority::Normal,
        idempotency_key: None,
        requested_by: "test".into(),
        assigned_at: Timestamp::now(),
        expires_at: None,
        attempt: 1,
    }
}

/// An agent identity issued by a [`FakeCore`]'s CA, as enrollment would give it.
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// The agent's name.
    pub name: String,
    /// Its id (the certificate's SAN `wharf://agent/<id>`).
    pub agent_id: Uuid,
    /// Its private key, PEM.
    pub key_pem: SecretString,
    /// Its client certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// End of the certificate's validity.
    pub not_after: Timestamp,
}

/// A QUIC listener on 127.0.0.1 with core's mTLS configuration and a CA of its own.
pub struct FakeCore {
    endpoint: Endpoint,
    addr: SocketAddr,
    ca: CertificateAuthority,
}

impl std::fmt::Debug for FakeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCore")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeCore {
    /// A new CA, a server certificate for `localhost`, a listener on a free port. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// The PKI or the socket cannot be set up.
    pub fn start() -> Result<FakeCore> {
        let now = SystemTime::now();
        let ca = CertificateAuthority::generate(now)?;
        let server = ca.issue_server_cert(&["localhost"], now)?;
        let identity = TlsIdentity::for_server(&server, ca.cert_der())?;
        let tls = mtls_server_config(
            &identity,
            ca.cert_der(),
            Arc::new(RevocationList::new()),
            &[ALPN_WHARF],
        )?;
        let crypto = QuicServerConfig::try_from(Arc::new(tls))?;
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = endpoint.local_addr()?;
        Ok(FakeCore { endpoint, addr, ca })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT` (verify the server name `localhost`).
    pub fn core_addr(&self) -> String {
        self.addr.to_string()
    }

    /// An identity issued by this core's CA (valid for an hour).
    ///
    /// # Errors
    ///
    /// Key generation or issuance failed.
    pub fn issue(&self, name: &str) -> Result<IssuedIdentity> {
        let (key_pem, csr) = generate_agent_key_and_csr(name)?;
        let agent_id = Uuid::new_v4();
        let cert = self.ca.issue_agent_cert(
            &agent_id.to_string(),
            name,
            AgentKeyRequest::CsrPem(&csr),
            SystemTime::now(),
            Duration::from_secs(3600),
        )?;
        Ok(IssuedIdentity {
            name: name.into(),
            agent_id,
            key_pem,
            cert_pem: cert.pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Timestamp::from_system_time(cert.not_after),
        })
    }

    /// A simulated agent's identity issued by this core's CA, with a fresh sealing key.
    ///
    /// # Errors
    ///
    /// As [`FakeCore::issue`].
    pub fn enrolled(&self, name: &str) -> Result<Enrolled> {
        let issued = self.issue(name)?;
        Ok(Enrolled {
            name: issued.name,
            agent_id: issued.agent_id,
            key_pem: issued.key_pem,
            cert_pem: issued.cert_pem,
            ca_pem: issued.ca_pem,
            not_after: issued.not_after,
            seal_key: Arc::new(AgentSealKey::generate()?),
        })
    }

    /// Accepts the next connection and reads its `Hello`.
    ///
    /// # Errors
    ///
    /// Nothing arrives within [`FAKE_CORE_WAIT`], the handshake fails, or the first frame
    /// is not `Hello`.
    pub async fn accept(&self) -> Result<FakeSession> {
        let incoming = tokio::time::timeout(FAKE_CORE_WAIT, self.endpoint.accept())
            .await
            .context("no connection in time")?
            .ok_or_else(|| anyhow!("the endpoint is closed"))?;
        let conn = incoming.await.context("handshake")?;
        let (send, mut recv) = tokio::time::timeout(FAKE_CORE_WAIT, conn.accept_bi())
            .await
            .context("no control stream in time")?
            .context("control stream")?;
        let hello = match read_frame(&mut recv, MAX).await? {
            Some(Message::Hello(h)) => h,
            other => bail!("expected Hello, got {other:?}"),
        };
        Ok(FakeSession {
            conn,
            send,
            recv,
            hello,
        })
    }
}

/// One agent connection, its control stream and its `Hello`.
#[derive(Debug)]
pub struct FakeSession {
    /// The connection.
    pub conn: Connection,
    /// Core's side of the control stream.
    pub send: SendStream,
    /// The agent's side of the control stream.
    pub recv: RecvStream,
    /// The agent's `Hello`.
    pub hello: Hello,
}

impl FakeSession {
    /// Sends `Welcome` with this heartbeat interval.
    ///
    /// # Errors
    ///
    /// The stream is gone.
    pub async fn welcome(&mut self, heartbeat: Duration) -> Result<()> {
        let welcome = Message::Welcome(Welcome {
            core_version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_interval: DurationMs::from(heartbeat),
            limits: Limits::default(),
        });
        Ok(write_frame(&mut self.send, &welcome, MAX).await?)
    }

    /// Sends `ResultAck` on the control stream (for a pending result of `Hello`).
    ///
    /// # Errors
    ///
    /// The stream is gone.
    pub async fn ack(&mut self, task_id: Uuid, attempt: u32) -> Result<()> {
        let ack = Message::ResultAck(ResultAck { task_id, attempt });
        Ok(write_frame(&mut self.send, &ack, MAX).await?)
    }

    /// The next control stream frame.
    ///
    /// # Errors
    ///
    /// None within [`FAKE_CORE_WAIT`], or the stream ended or failed.
    pub async fn control(&mut self) -> Result<Message> {
        tokio::time::timeout(FAKE_CORE_WAIT, read_frame(&mut self.recv, MAX))
            .await
            .context("no control frame in time")??
            .ok_or_else(|| anyhow!("the control stream ended"))
    }

    /// Opens a task stream and sends `Assign`.
    ///
    /// # Errors
    ///
    /// The connection is gone.
    pub async fn assign(&self, task: &AgentTask) -> Result<FakeTaskStream> {
        let (mut send, recv) = self.conn.open_bi().await?;
        write_frame(&mut send, &Message::Assign(task.clone()), MAX).await?;
        Ok(FakeTaskStream { send, recv })
    }
}

/// A task stream opened by the scripted core.
#[derive(Debug)]
pub struct FakeTaskStream {
    /// Core's side.
    pub send: SendStream,
    /// The agent's side.
    pub recv: RecvStream,
}

impl FakeTaskStream {
    /// The next frame: `Ok(Ok(None))` at the end of the stream, `Ok(Err(_))` if the agent
    /// reset it.
    ///
    /// # Errors
    ///
    /// Nothing within [`FAKE_CORE_WAIT`].
    pub async fn read(&mut self) -> Result<std::result::Result<Option<Message>, String>> {
        Ok(
            tokio::time::timeout(FAKE_CORE_WAIT, read_frame(&mut self.recv, MAX))
                .await
                .context("no task stream frame in time")?
                .map_err(|e| e.to_string()),
        )
    }

    /// Reads `Accepted` for `task`.
    ///
    /// # Errors
    ///
    /// Another frame (or none) came.
    pub async fn expect_accepted(&mut self, task: &AgentTask) -> Result<()> {
        match self.read().await? {
            Ok(Some(Message::Accepted(a))) if (a.task_id, a.attempt) == (task.id, task.attempt) => {
                Ok(())
            }
            other => bail!(
                "expected Accepted for {} attempt {}, got {other:?}",
                task.id,
                task.attempt
            ),
        }
    }

    /// Skips `Progress` frames; returns the result and how many progress frames came.
    ///
    /// # Errors
    ///
    /// Another frame (or none) came.
    pub async fn expect_result(&mut self) -> Result<(TaskResult, usize)> {
        let mut progress = 0;
        loop {
            match self.read().await? {
                Ok(Some(Message::Progress(_))) => progress += 1,
                Ok(Some(Message::Result(r))) => return Ok((r, progress)),
                other => bail!("expected Result, got {other:?}"),
            }
        }
    }

    /// Acknowledges `result` and finishes core's side of the stream.
    ///
    /// # Errors
    ///
    /// The stream is gone.
    pub async fn ack(&mut self, result: &TaskResult) -> Result<()> {
        let ack = Message::ResultAck(ResultAck {
            task_id: result.task_id,
            attempt: result.attempt,
        });
        write_frame(&mut self.send, &ack, MAX).await?;
        let _ = self.send.finish();
        Ok(())
    }
}
