//! Process plumbing shared by the binaries: logging and the shutdown signal.

use tracing_subscriber::EnvFilter;

/// Sets up text logging to stderr (see [`crate::logging`]). `RUST_LOG`, when set, overrides the
/// configured level.
pub fn init_tracing(level: &str) {
    crate::logging::init(level, crate::logging::LogFormat::Text, Default::default());
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A binary's exit status: success, or failure after one line on stderr, `PROGRAM: ERROR`, with
/// the error's causes (`{:#}`) on that line too.
pub fn exit_code<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Valid log levels for a `log-level` config key.
pub fn check_log_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?} is not a log filter ({e})"))
}

/// The connections a listener accepts, with Nagle's algorithm off. tonic sets `TCP_NODELAY`
/// only on sockets it binds itself; without it, small replies wait for delayed ACKs (~40 ms).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
            stream
        });
        Some((accepted, listener))
    })
}
