//! TLS on the client-facing ports (a broker's client port, a NameServer's port) and for the
//! connections nodes and clients make to them.
//!
//! A server's certificate and key come from files; the files are read again on SIGHUP and when
//! they change (checked every [`RELOAD_CHECK`]), so a renewed certificate takes effect without a
//! restart. A reload that fails (a half-written file, a key that does not match) is logged and
//! the certificate in use stays. With a client CA, clients must present a certificate it signed
//! (mutual TLS); a handshake that fails is logged with the caller's address and never reaches
//! gRPC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::shutdown::Stopping;

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// Longest TLS handshake; a client that stalls longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no PEM private key: {e}", path.display()))
}

/// ring, the provider tonic's `tls-ring` builds rustls with (its post-quantum key exchange is
/// aws-lc-rs only; TLS 1.3 with X25519 is what every client here offers).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

fn build(files: &ServerFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    // gRPC clients (the official ones among them) insist on HTTP/2 chosen by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn stamps(files: &ServerFiles) -> Vec<Option<SystemTime>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// A server's TLS configuration, reloadable while it serves.
pub struct ServerTls {
    files: ServerFiles,
    config: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish()
    }
}

impl ServerTls {
    /// Reads the files; the error names the file and what is wrong with it.
    pub fn load(files: ServerFiles) -> Result<Arc<ServerTls>, String> {
        let config = build(&files)?;
        Ok(Arc::new(ServerTls {
            stamps: Mutex::new(stamps(&files)),
            config: RwLock::new(config),
            files,
        }))
    }

    /// Reads the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamps_now = stamps(&self.files);
        let config = build(&self.files)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps_now;
        Ok(())
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&self.files)
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads on SIGHUP and when a file changes, until `stop`.
    pub fn watch(self: &Arc<Self>, mut stop: Stopping) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                let why = tokio::select! {
                    true = signalled => "SIGHUP",
                    _ = tokio::time::sleep(RELOAD_CHECK) => {
                        if !tls.changed() { continue }
                        "a changed file"
                    }
                    _ = stop.wait() => return,
                };
                match tls.reload() {
                    Ok(()) => tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded ({why})"),
                    Err(e) => {
                        // Not again until the files change again.
                        *tls.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&tls.files);
                        tracing::warn!("TLS certificate not reloaded ({why}), the old one stays: {e}")
                    }
                }
            }
        })
    }

    /// The TLS connections over `incoming`: each handshake runs on its own task (a slow client
    /// holds up nobody), with the configuration current when the connection came. A handshake
    /// that fails (no client certificate, an untrusted one, a plaintext client) is logged with
    /// the caller's address and counted with `refused`.
    pub fn accept<S, IO>(
        self: Arc<Self>,
        incoming: S,
        refused: Arc<dyn Fn() + Send + Sync>,
    ) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<IO>>>
    where
        S: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = TcpConnectInfo> + Unpin + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            loop {
                let next = tokio::select! {
                    next = incoming.next() => next,
                    _ = tx.closed() => return,
                };
                let Some(accepted) = next else { return };
                let io = match accepted {
                    Ok(io) => io,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
                let (tx, refused) = (tx.clone(), refused.clone());
                tokio::spawn(async move {
                    let caller: Option<SocketAddr> = io.connect_info().remote_addr();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            refused();
                            tracing::warn!(
                                caller = %caller.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                                "TLS handshake refused: {e}"
                            )
                        }
                        Err(_) => tracing::debug!(?caller, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// What a client (or a node calling another) needs to connect over TLS: the CA it trusts and,
/// for servers that require client certificates, its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientFiles {
    /// tonic's client TLS settings from the files.
    pub fn load(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        // Checked here, so a bad file is named at start rather than at the first connection.
        roots(&self.ca)?;
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                certs(cert)?;
                self::key(key)?;
                config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err("a client certificate needs its key, and a key its certificate".into()),
        }
        Ok(config)
    }
}

/// An endpoint for `addr` (`host:port`): `https` with `tls`, `http` without.
pub fn endpoint(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("address {addr:?}: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS for {addr}: {e}")),
        None => Ok(endpoint),
    }
}
