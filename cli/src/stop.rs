//! SIGTERM and SIGINT for the worker, caught from its first moment.
//!
//! Catching a signal replaces its default action (ending the process, status 143 or 130) for
//! the rest of the process's life, so only the worker catches them, and it does so right after
//! the command line is parsed: before settings are read or the database is connected, a stop
//! request is then still seen, and the worker stops cleanly instead of being killed. The other
//! commands keep the default action.

/// The worker's stop signals, caught from [`StopSignals::catch`] on; [`StopSignals::recv`]
/// completes on the first one that arrives (also one that arrived before it was called).
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts catching SIGTERM and SIGINT (Ctrl-C elsewhere than on Unix).
    pub fn catch() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    /// Completes when SIGTERM or SIGINT has arrived since [`StopSignals::catch`].
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
