//! End-to-end tests: each starts the real `hyprstream-server` binary on a free port with a
//! temporary data directory and drives it through the Rust client over Flight.
//! (One test binary: every test binary links the whole stack.)
mod batch;
mod cli;
mod common;
mod errors;
mod flight_surface;
mod gpu;
mod indexes;
mod ingest_search;
mod lifecycle;
mod models;
