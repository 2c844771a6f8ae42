//! Domain errors → gRPC statuses (the only place that decides which status a failure gets).
use tonic::Status;

use crate::error::{Error, ErrorKind};

/// Longest status message sent. Messages quote what the client sent (a table name, a filter);
/// gRPC carries them in a trailer, and clients refuse trailers past ≈ 8 KiB with
/// RESOURCE_EXHAUSTED, which would hide the real status.
const MAX_MESSAGE_BYTES: usize = 2048;

pub fn to_status(e: Error) -> Status {
    let message = bounded(e.message);
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::Unimplemented => Status::unimplemented(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

/// The message cut to `MAX_MESSAGE_BYTES` (at a character boundary), saying how much was cut.
fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({} more bytes of this message cut)", total - end));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = format!("invalid table name '{}'", "é".repeat(5000));
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 64);
        assert!(cut.starts_with("invalid table name 'éé"));
        assert!(cut.ends_with("more bytes of this message cut)"));
        assert_eq!(bounded("short".into()), "short");
    }
}
