//! The stop signal of a component's tasks. The owner keeps the [`Shutdown`] and stops every task
//! at once; each task keeps a [`Stopping`] and waits on it beside its work, in a `select!`.

use tokio::sync::watch;

/// Stops every [`Stopping`] made from it. Dropping it stops them too.
#[derive(Debug)]
pub struct Shutdown(watch::Sender<bool>);

/// A task's view of its component's [`Shutdown`].
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Shutdown {
    /// A new signal, not yet given, and a first listener.
    pub fn new() -> (Shutdown, Stopping) {
        let (tx, rx) = watch::channel(false);
        (Shutdown(tx), Stopping(rx))
    }

    /// Gives the signal: every waiting task wakes, and every later wait returns at once.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Another listener.
    pub fn stopping(&self) -> Stopping {
        Stopping(self.0.subscribe())
    }
}

impl Stopping {
    /// Resolves once the signal is given (or its [`Shutdown`] is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Whether the signal has been given.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_every_listener_and_later_ones_at_once() {
        let (shutdown, mut first) = Shutdown::new();
        let mut second = first.clone();
        assert!(!first.is_stopped());
        let waiting = tokio::spawn(async move { first.wait().await });
        shutdown.stop();
        waiting.await.unwrap();
        second.wait().await;
        let mut late = shutdown.stopping();
        assert!(late.is_stopped());
        late.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_shutdown_stops_too() {
        let (shutdown, mut stopping) = Shutdown::new();
        drop(shutdown);
        stopping.wait().await;
    }
}
