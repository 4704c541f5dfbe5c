//! What every Aqueduct binary does at its edge, written once: logs to stderr filtered by
//! `AQUEDUCT_LOG` (default `info`) in the format `AQUEDUCT_LOG_FORMAT` asks for, and the
//! signals that stop a long-running command. Behind the `edge` feature, so that libraries do
//! not pull in a log subscriber.

use std::str::FromStr;

/// What `--help` of every binary says about its logs.
pub const LOG_HELP: &str = "Logs go to stderr. Environment:\n  \
    AQUEDUCT_LOG         which events, as a tracing filter (default info; e.g. debug, aqueduct_spoke=debug,info)\n  \
    AQUEDUCT_LOG_FORMAT  text (human-readable, the default) or json (one JSON object per line, with its spans)";

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal (the default).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and fields, and the spans
    /// the event happened in), for log collectors.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "AQUEDUCT_LOG_FORMAT is {0:?}, not a log format: use `text` (human-readable, the default) or `json` (one JSON object per line)"
    )]
    Format(String),
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(LoggingError::Format(s.to_string())),
        }
    }
}

impl LogFormat {
    /// The format `AQUEDUCT_LOG_FORMAT` names (unset: text).
    pub fn from_env() -> Result<Self, LoggingError> {
        std::env::var("AQUEDUCT_LOG_FORMAT").map_or(Ok(Self::Text), |v| v.parse())
    }
}

/// Logs to stderr, filtered by `AQUEDUCT_LOG` (default `info`), as `AQUEDUCT_LOG_FORMAT` says:
/// `text` (colours only on a terminal) or `json`. An unknown format is an error: the binary
/// says so and stops before it does anything.
pub fn init_logging() -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    let format = LogFormat::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
    Ok(())
}

/// The open-file limit before and after [`raise_open_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    pub was: u64,
    pub now: u64,
}

/// Raises this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit, so that a
/// server's connection caps, not the descriptor limit (often 1024), are what binds. Logs the
/// outcome; returns the limits, or the error (the process keeps its limit).
pub fn raise_open_file_limit() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(soft = was, hard = limit.rlim_max, error = %e, "could not raise the open-file limit");
            return Err(e);
        }
    }
    let files = OpenFiles { was, now: limit.rlim_cur };
    tracing::info!(was = files.was, now = files.now, "open-file limit (RLIMIT_NOFILE) raised to the hard limit");
    Ok(files)
}

/// Returns on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let files = raise_open_file_limit().unwrap();
        assert!(files.now >= files.was);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, limit.rlim_cur), (files.now, limit.rlim_max));
    }

    #[test]
    fn formats_parse_and_an_unknown_one_says_what_to_use() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let err = "yaml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(err.contains("\"yaml\"") && err.contains("`json`"), "{err}");
    }
}
