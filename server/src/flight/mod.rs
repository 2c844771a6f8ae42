//! The Flight edge: parse the request, call the domain, encode the answer. No table logic
//! lives here; every failure leaves as the gRPC status `status::to_status` picks.
mod actions;
pub mod auth;
mod encode;
mod request;
mod service;
mod status;

pub use encode::MAX_FLIGHT_DATA_BYTES;
pub use service::HyprstreamFlight;
