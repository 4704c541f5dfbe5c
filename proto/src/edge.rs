//! What every Aqueduct binary does at its edge, written once: logs to stderr filtered by
//! `AQUEDUCT_LOG` (default `info`), and the signals that stop a long-running command.
//! Behind the `edge` feature, so that libraries do not pull in a log subscriber.

/// Logs to stderr, filtered by `AQUEDUCT_LOG` (default `info`); colours only on a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Returns on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
