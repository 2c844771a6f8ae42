//! Lance errors → domain errors.
use crate::error::Error;

/// Lance's messages end in ", /path/to/source.rs:LINE:COL": useful in a log, noise to a user.
pub(crate) fn strip_location(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(pos) = out.rfind(", ") {
        let tail = &out[pos + 2..];
        let looks_like_location =
            tail.contains(".rs:") && tail.split(':').skip(1).all(|p| p.trim().chars().all(|c| c.is_ascii_digit()));
        if looks_like_location {
            out.truncate(pos);
        } else {
            break;
        }
    }
    out
}

pub fn lance_error(e: lance::Error) -> Error {
    use lance::Error as L;
    let message = strip_location(&e.to_string());
    match e {
        // Unprocessable: data Lance cannot use as asked (too few non-zero vectors to train an
        // index under cosine, which leaves zero vectors out).
        L::InvalidInput { .. } | L::SchemaMismatch { .. } | L::Schema { .. } | L::FieldNotFound { .. } | L::Unprocessable { .. } => {
            Error::invalid(message)
        }
        L::DatasetNotFound { .. } | L::NotFound { .. } | L::VersionNotFound { .. } | L::IndexNotFound { .. } => {
            Error::not_found(message)
        }
        L::DatasetAlreadyExists { .. } => Error::already_exists(message),
        _ => {
            tracing::warn!(error = %e, "lance error");
            Error::internal(message)
        }
    }
}
