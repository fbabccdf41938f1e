//! How a case ends when it does not pass: a failure (the server broke the
//! spec) or a skip (the server lacks what the case needs), with the
//! macros the cases use to say so.

use std::fmt;

/// A case that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseError {
    /// The server did not behave as the spec says; the text says how.
    Fail(String),
    /// The case cannot run against this server; the text says why.
    Skip(String),
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Fail(s) => write!(f, "fail: {s}"),
            CaseError::Skip(s) => write!(f, "skip: {s}"),
        }
    }
}

impl CaseError {
    /// Prefixes a failure's text with context (skips are left alone).
    pub fn context(self, what: impl fmt::Display) -> CaseError {
        match self {
            CaseError::Fail(s) => CaseError::Fail(format!("{what}: {s}")),
            skip => skip,
        }
    }
}

/// What every case returns.
pub type CaseResult<T = ()> = Result<T, CaseError>;

/// Fails the case with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($t:tt)*) => {
        return Err($crate::check::CaseError::Fail(format!($($t)*)))
    };
}

/// Skips the case with a formatted reason.
#[macro_export]
macro_rules! skip {
    ($($t:tt)*) => {
        return Err($crate::check::CaseError::Skip(format!($($t)*)))
    };
}

/// Fails the case unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        // A match, not `!cond`: conditions may compare floats.
        match $cond {
            true => {}
            false => $crate::fail!($($t)*),
        }
    };
}

/// Fails the case unless both sides are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($t:tt)*) => {
        // A match keeps temporaries in both expressions alive.
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    $crate::fail!("{}: got {:?}, expected {:?}", format!($($t)*), l, r);
                }
            }
        }
    };
}
