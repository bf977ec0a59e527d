//! The metrics endpoint of every raftmq node: `GET /metrics` in the OpenMetrics text format
//! (which Prometheus scrapes), on an HTTP port of the node's own, from a
//! [`prometheus_client`] registry. The HTTP server is axum on the hyper that tonic already
//! brings. Label sets stay bounded: topics, consumer groups, queues, node ids and error codes,
//! never message ids or client ids.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
pub use prometheus_client;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the endpoint answers: the OpenMetrics text of one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `metrics-addr = "auto"` adds to the node's client port.
pub const AUTO_PORT_OFFSET: u16 = 20_000;

/// The address a node's `metrics-addr` names: `None` for `off`; for `auto`, the host of the
/// node's client address `node_addr` with its port plus [`AUTO_PORT_OFFSET`] (port 0 stays 0:
/// any free port); otherwise the `host:port` given. The error says why a value cannot be used.
pub fn resolve(value: &str, node_addr: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = |addr: &str| -> Result<(String, u16), String> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr:?} is not host:port, auto or off"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{addr:?} has no port number (0 to 65535)"))?;
        if host.is_empty() {
            return Err(format!("{addr:?} has no host"));
        }
        Ok((host.to_owned(), port))
    };
    if v.eq_ignore_ascii_case("auto") {
        let (host, port) = split(node_addr)?;
        if port == 0 {
            return Ok(Some(format!("{host}:0")));
        }
        let port = port
            .checked_add(AUTO_PORT_OFFSET)
            .ok_or_else(|| format!("auto: port {port} plus {AUTO_PORT_OFFSET} is over 65535; set an address or off"))?;
        return Ok(Some(format!("{host}:{port}")));
    }
    split(v)?;
    Ok(Some(v.to_owned()))
}

/// Encodes a registry (and its collectors) as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!("encoding metrics failed: {e}");
    }
    out
}

/// A running endpoint.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Serves `GET /metrics` from `render` on `listener` until `stop` resolves.
pub fn serve(
    listener: TcpListener,
    render: Render,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Endpoint> {
    let addr = listener.local_addr()?;
    let metrics = get(move || {
        let render = render.clone();
        async move { ([(CONTENT_TYPE, OPENMETRICS)], render()).into_response() }
    });
    let app = Router::new()
        .route("/metrics", metrics)
        .route("/", get(|| async { "raftmq: metrics at /metrics\n" }));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(Endpoint { addr, task })
}

/// Buckets for latencies in seconds: 50 µs to about 13 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 19)
}

/// Connections a gRPC port has accepted and holds open.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    pub open: prometheus_client::metrics::gauge::Gauge,
    pub accepted: prometheus_client::metrics::counter::Counter,
}

impl Connections {
    /// Registers both as `<name>` (open now) and `<name>_accepted` (ever).
    pub fn register(&self, registry: &mut Registry, name: &str, what: &str) {
        registry.register(name, format!("{what} open now"), self.open.clone());
        registry.register(
            format!("{name}_accepted"),
            format!("{what} accepted since the node started"),
            self.accepted.clone(),
        );
    }

    /// `incoming` with each connection counted while it stays open.
    pub fn track<S>(self, incoming: S) -> impl futures::Stream<Item = std::io::Result<Tracked>>
    where
        S: futures::Stream<Item = std::io::Result<tokio::net::TcpStream>>,
    {
        use futures::StreamExt;
        incoming.map(move |accepted| {
            accepted.map(|stream| {
                self.accepted.inc();
                self.open.inc();
                Tracked {
                    stream,
                    open: self.open.clone(),
                }
            })
        })
    }
}

/// A connection counted in [`Connections::open`] until it is dropped.
#[derive(Debug)]
pub struct Tracked {
    stream: tokio::net::TcpStream,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = <tokio::net::TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
