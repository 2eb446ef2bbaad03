//! The errors of the metering engine.

use std::path::PathBuf;

/// A policy that cannot be built; the message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A value is out of range or inconsistent; `place` names where (`plans.build.limits[0]`).
    #[error("{place}: {problem}; {fix}")]
    Invalid {
        /// Where in the policy the mistake is.
        place: String,
        /// What is wrong.
        problem: String,
        /// What to change.
        fix: String,
    },
    /// A policy file could not be read or parsed; the message names the file, line and column.
    #[error("{}:{line}:{column}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the mistake (0 when the file could not be read at all).
        line: usize,
        /// 1-based column of the mistake.
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl PolicyError {
    /// A mistake at `place`, with what is wrong and what to change.
    pub fn invalid(
        place: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            place: place.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The place a validation error names, if it is one.
    pub fn place(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { place, .. } => Some(place),
            PolicyError::File { .. } => None,
        }
    }

    /// This error with `prefix` put in front of its place (`orgs[2]` + `overrides[0]`).
    pub(crate) fn within(self, prefix: &str) -> Self {
        match self {
            PolicyError::Invalid {
                place,
                problem,
                fix,
            } => PolicyError::Invalid {
                place: if place.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{place}")
                },
                problem,
                fix,
            },
            other => other,
        }
    }
}

/// A store could not answer; the request is then let through or refused as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend is down or refused the call.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The backend did not answer within its time limit.
    #[error("store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The backend answered something the store cannot read.
    #[error("store answered something unexpected: {0}")]
    Protocol(String),
}
