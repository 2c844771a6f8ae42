//! Domain errors. The Flight edge maps each kind to one gRPC status; the store maps Lance's
//! errors into these, so nothing below the edge knows about gRPC.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the message says what to change.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request is well formed but what it relies on is not usable (a stored model whose
    /// output is not finite); retrying will not help until that is fixed.
    FailedPrecondition,
    /// The server is stopping; the request may be sent again once it is back.
    Unavailable,
    /// Credentials are missing or wrong.
    Unauthenticated,
    /// Not offered by this server.
    Unimplemented,
    /// The server failed; the request may be retried.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::InvalidArgument, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::NotFound, message: message.into() }
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::AlreadyExists, message: message.into() }
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::FailedPrecondition, message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Unavailable, message: message.into() }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Unauthenticated, message: message.into() }
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Unimplemented, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Internal, message: message.into() }
    }
}

/// What a client sent, quoted in a message: cut to 200 characters, so the explanation that
/// follows it survives the status's length limit.
pub fn quoted(text: &str) -> String {
    const KEEP: usize = 200;
    match text.char_indices().nth(KEEP) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} more characters)", &text[..end], text[end..].chars().count()),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::internal(format!("arrow: {e}"))
    }
}
