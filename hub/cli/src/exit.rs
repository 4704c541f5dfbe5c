//! `aq`'s exit codes, in one table: what each means, the text `aq --help` shows for them, and
//! the error type a command returns to leave with a code other than 1.
//!
//! A script tells outcomes apart by code alone: 0 done, 1 an error (bad input, the hub
//! unreachable, a refusal), 2 a usage error (clap's own), 3 a row the command looked at is
//! Failed, 4 a wait timed out. A command that ends with 3 or 4 returns an [`Exited`] inside its
//! `anyhow::Error`; [`code_of`] finds it (any other error is 1).

use std::fmt;

/// Why `aq` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Error,
    Usage,
    Failed,
    TimedOut,
}

impl Exit {
    /// Every code, in order.
    pub const ALL: [Exit; 5] = [Exit::Ok, Exit::Error, Exit::Usage, Exit::Failed, Exit::TimedOut];

    /// The process's exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            // What clap exits with on a flag or value it cannot parse.
            Exit::Usage => 2,
            Exit::Failed => 3,
            Exit::TimedOut => 4,
        }
    }

    /// What the code means, for `aq --help` and the README.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "done (for --wait: every region reached what it waited for)",
            Exit::Error => "an error: bad input, the hub unreachable, the hub refused the call",
            Exit::Usage => "a usage error: an unknown subcommand or flag, or a value that does not parse",
            Exit::Failed => {
                "a row is Failed (--wait; aq status --fail-on-failed): the message names the region and why"
            }
            Exit::TimedOut => "--wait timed out (--timeout): the message says where each region stands",
        }
    }
}

/// The table of exit codes, as `aq --help` ends with it.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for exit in Exit::ALL {
        text.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
    }
    text
}

/// An outcome that ends `aq` with its own code (3 or 4), with the message for stderr.
#[derive(Debug)]
pub struct Exited {
    pub exit: Exit,
    pub message: String,
}

impl Exited {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }
}

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exited {}

/// The code an error ends `aq` with: an [`Exited`]'s own, 1 for any other.
pub fn code_of(error: &anyhow::Error) -> Exit {
    error.chain().find_map(|e| e.downcast_ref::<Exited>()).map_or(Exit::Error, |e| e.exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented_in_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        let help = help();
        for exit in Exit::ALL {
            assert!(help.contains(&format!("  {}  {}", exit.code(), exit.meaning())), "{help}");
        }
    }

    #[test]
    fn an_error_carries_its_code_through_context() {
        let failed = anyhow::Error::new(Exited::new(Exit::Failed, "eu: source changed"));
        assert_eq!(code_of(&failed), Exit::Failed);
        assert_eq!(code_of(&failed.context("waiting for llama@v1")), Exit::Failed);
        assert_eq!(code_of(&anyhow::anyhow!("refused")), Exit::Error);
    }
}
