//! Running a NameServer: bind, serve, scan for silent brokers, and shut down cleanly.
//!
//! Every task started here listens to one shutdown signal, and [`NameServer::shutdown`] returns
//! only after all of them ended: no task outlives the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use raftmq_common::shutdown::Shutdown;
use raftmq_proto::name_server_server::NameServerServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::NamesrvConfig;
use crate::service::{NameServerService, Shared};

/// How long shutdown waits for open connections to close.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A running NameServer.
pub struct NameServer {
    addr: SocketAddr,
    metrics: Option<raftmq_metrics::Endpoint>,
    stop: Shutdown,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    scanner: JoinHandle<()>,
    /// Reloads the TLS certificate, when the port serves TLS.
    tls_watch: Option<JoinHandle<()>>,
}

impl NameServer {
    /// Binds the configured address and starts serving. The config must have been validated.
    pub async fn start(config: &NamesrvConfig) -> anyhow::Result<NameServer> {
        let listen = config.listen_addr()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = Shutdown::new();
        let shared = Shared::new(config.broker_expiry(), stopped.clone(), config.security.load()?);

        let scanner = {
            let shared = shared.clone();
            let mut stopped = stopped.clone();
            let mut tick = tokio::time::interval(config.scan_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tick.tick() => shared.expire(Instant::now()),
                        _ = stopped.wait() => return,
                    }
                }
            })
        };

        let metrics = match config.metrics_bind_addr()? {
            Some(at) => {
                let listener = TcpListener::bind(&at)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on metrics-addr {at}: {e}"))?;
                let registry = crate::metrics::registry(&shared.counters, Arc::downgrade(&shared));
                let render: raftmq_metrics::Render = Arc::new(move || raftmq_metrics::encode(&registry));
                let mut stopped = stopped.clone();
                let endpoint = raftmq_metrics::serve(listener, render, async move { stopped.wait().await })?;
                tracing::info!(addr = %endpoint.addr, "metrics at /metrics");
                Some(endpoint)
            }
            None => None,
        };
        let security = config.security.load()?;
        let rocketmq = raftmq_rocketmq::MessagingService::new(
            Arc::new(crate::service::RocketMqRoutes(shared.clone())),
            stopped.clone(),
        )
        .with_tls(security.client_tls.clone());
        let server_tls = match &security.server_tls {
            Some(files) => Some(raftmq_common::tls::ServerTls::load(files.clone()).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls_watch = server_tls.as_ref().map(|tls| tls.watch(stopped.clone()));
        let mut stopped_server = stopped;
        let incoming = shared
            .counters
            .connections
            .clone()
            .track(raftmq_common::runtime::incoming(listener));
        let tls_refusals = shared.counters.tls_refusals.clone();
        let router = tonic::transport::Server::builder()
            .add_service(NameServerServer::new(NameServerService::new(shared)))
            .add_service(rocketmq.server());
        let stopping = async move { stopped_server.wait().await };
        let server = match server_tls {
            Some(tls) => {
                let counted = tls_refusals;
                let refused = Arc::new(move || {
                    counted.inc();
                });
                tokio::spawn(router.serve_with_incoming_shutdown(tls.accept(incoming, refused), stopping))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopping)),
        };
        tracing::info!(%addr, "NameServer listening");
        Ok(NameServer {
            addr,
            metrics,
            stop,
            server,
            scanner,
            tls_watch,
        })
    }

    /// The address it actually listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it serves metrics, unless that is off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|e| e.addr)
    }

    /// Stops accepting requests, ends watch streams and the scanner, and waits for all of them.
    /// Connections that do not close within [`DRAIN_TIMEOUT`] are dropped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.stop();
        self.scanner.await?;
        if let Some(watch) = self.tls_watch.take() {
            watch.await?;
        }
        if let Some(metrics) = self.metrics.take() {
            let mut task = metrics.task;
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.server).await {
            Ok(ended) => ended??,
            Err(_) => {
                tracing::warn!("clients kept connections open for {DRAIN_TIMEOUT:?}; closing them");
                self.server.abort();
            }
        }
        tracing::info!(addr = %self.addr, "NameServer stopped");
        Ok(())
    }

    /// Waits until the server ends by itself (it only does on an error).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }
}
