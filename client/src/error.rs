//! What can go wrong, typed so a caller can decide: fix the SQL, retry
//! later, check whether a write landed, or report a bug.

use nexusd_protocol::{ErrorBody, ErrorKind};

/// SQLite's primary result code for constraint violations.
const SQLITE_CONSTRAINT: i32 = 19;
/// SQLite's primary result code for a refused (unauthorized) statement.
const SQLITE_AUTH: i32 = 23;

/// An error from SQLite (or a statement nexusd refuses to run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// SQLite's primary result code, e.g. 19 for SQLITE_CONSTRAINT.
    pub code: i32,
    /// SQLite's extended result code, e.g. 2067 for SQLITE_CONSTRAINT_UNIQUE.
    pub extended_code: i32,
    pub message: String,
    /// For a batch, the 0-based index of the statement that failed.
    pub statement_index: Option<usize>,
    /// True when nexusd refused the statement (BEGIN, ATTACH, a connection
    /// pragma) rather than SQLite failing it.
    pub refused: bool,
    /// Rows the statement (for a batch, its statements) changed before it
    /// failed. None of them was applied, but SQLite counts them in
    /// `total_changes()`, and so do drivers that keep that count.
    pub total_changes: u64,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLite code {})", self.message, self.extended_code)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite rejected the statement, or nexusd refused it. Nothing was
    /// applied (for a batch: none of its statements).
    #[error("SQL error: {0}")]
    Sql(SqlError),
    /// The request ran out of time before it started, or was interrupted and
    /// rolled back. Nothing was applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The daemon is at a limit (connections, queue). Nothing was applied;
    /// retry later.
    #[error("nexusd is overloaded: {0}")]
    Overloaded(String),
    /// The result would exceed the daemon's result-size limit.
    #[error("result too large: {0}")]
    TooLarge(String),
    /// The daemon is shutting down and did not run the request.
    #[error("nexusd is shutting down: {0}")]
    ShuttingDown(String),
    /// This process's uid lacks the role the request needs; nothing was
    /// applied. The message names the uid and the role.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// No connection to the daemon could be made.
    #[error("could not connect to nexusd at {path}: {reason}")]
    Connect { path: String, reason: String },
    /// The connection died while the request was out. When
    /// `outcome_unknown` is true the request may or may not have been
    /// applied: it is never retried behind your back; check, then decide.
    #[error("disconnected from nexusd: {message}")]
    Disconnected {
        message: String,
        outcome_unknown: bool,
    },
    /// One side broke the wire protocol (or the versions differ).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon does not serve this request, or failed internally.
    #[error("nexusd could not serve the request: {0}")]
    Server(String),
    /// The daemon could not do an operation on its own files or the
    /// filesystem (an I/O error, a backup it could not write). The message
    /// names the path and the OS error.
    #[error("nexusd hit an I/O failure: {0}")]
    Io(String),
    /// `reload` was refused: the config file does not parse or validate.
    /// The settings in force did not change.
    #[error("config not reloaded: {0}")]
    ConfigRejected(String),
    /// An argument of the request is unusable (a backup destination that
    /// exists, say); nothing was done.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The transaction is over: its lease ran out, an operator or SQLite
    /// rolled it back, or its connection closed. Nothing in it was applied;
    /// run it again.
    #[error("transaction expired: {0}")]
    TransactionExpired(String),
    /// A deferred transaction's first write came after another write
    /// committed since its first read. Nothing in it was applied; retry it,
    /// or begin it immediate.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// A column index past the end of the row.
    #[error("column {index} does not exist: the row has {columns} columns")]
    ColumnOutOfRange { index: usize, columns: usize },
    /// A value that does not convert to the requested Rust type.
    #[error("column {index} holds {found}, which does not convert to {expected}")]
    Conversion {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
}

impl Error {
    /// A constraint violation (UNIQUE, CHECK, FOREIGN KEY, NOT NULL...).
    pub fn is_constraint(&self) -> bool {
        matches!(self, Error::Sql(e) if e.code == SQLITE_CONSTRAINT)
    }

    /// Timed out or overloaded: the request was not applied and may be
    /// retried later.
    pub fn is_timeout_or_overload(&self) -> bool {
        matches!(self, Error::Timeout(_) | Error::Overloaded(_))
    }

    /// No usable connection to the daemon.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected { .. } | Error::Connect { .. })
    }

    /// The request may or may not have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Disconnected {
                outcome_unknown: true,
                ..
            }
        )
    }

    /// The transaction this request belonged to is over, and nothing in it
    /// was applied ([`Error::TransactionExpired`]).
    pub fn is_transaction_expired(&self) -> bool {
        matches!(self, Error::TransactionExpired(_))
    }

    /// A deferred transaction lost a race with another write
    /// ([`Error::Conflict`]); retry the whole transaction.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// The SQL error, if this is one.
    pub fn as_sql(&self) -> Option<&SqlError> {
        match self {
            Error::Sql(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn from_body(body: ErrorBody) -> Error {
        match body.kind {
            ErrorKind::Sql | ErrorKind::Refused => Error::Sql(SqlError {
                code: if body.kind == ErrorKind::Refused {
                    SQLITE_AUTH
                } else {
                    body.code
                },
                extended_code: body.extended_code,
                message: body.message,
                statement_index: body.statement_index.map(|i| i as usize),
                refused: body.kind == ErrorKind::Refused,
                total_changes: body.total_changes,
            }),
            ErrorKind::Timeout => Error::Timeout(body.message),
            ErrorKind::Overloaded => Error::Overloaded(body.message),
            ErrorKind::TooLarge => Error::TooLarge(body.message),
            ErrorKind::ShuttingDown => Error::ShuttingDown(body.message),
            ErrorKind::Protocol => Error::Protocol(body.message),
            ErrorKind::Forbidden => Error::Forbidden(body.message),
            ErrorKind::Unsupported | ErrorKind::Internal => Error::Server(body.message),
            ErrorKind::Io => Error::Io(body.message),
            ErrorKind::ConfigRejected => Error::ConfigRejected(body.message),
            ErrorKind::InvalidArgument => Error::InvalidArgument(body.message),
            ErrorKind::TransactionExpired => Error::TransactionExpired(body.message),
            ErrorKind::Conflict => Error::Conflict(body.message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
