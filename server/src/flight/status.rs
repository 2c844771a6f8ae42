//! Domain errors → gRPC statuses (the only place that decides which status a failure gets).
use tonic::Status;

use crate::error::{Error, ErrorKind};

pub fn to_status(e: Error) -> Status {
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(e.message),
        ErrorKind::NotFound => Status::not_found(e.message),
        ErrorKind::AlreadyExists => Status::already_exists(e.message),
        ErrorKind::Unauthenticated => Status::unauthenticated(e.message),
        ErrorKind::Unimplemented => Status::unimplemented(e.message),
        ErrorKind::Internal => Status::internal(e.message),
    }
}
