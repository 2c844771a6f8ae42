//! Compiles `Flight.proto` into a FileDescriptorSet with Debian's `protoc` (the same
//! protoc Lance's own build needs), so the server can serve gRPC reflection.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("flight_descriptor.bin");
    let protoc = env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string());
    let mut cmd = Command::new(&protoc);
    cmd.arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("-I.");
    // google/protobuf/timestamp.proto ships with libprotobuf-dev (or next to a custom PROTOC).
    for include in ["/usr/include", "/usr/local/include"] {
        if PathBuf::from(include).join("google/protobuf/timestamp.proto").exists() {
            cmd.arg(format!("-I{include}"));
        }
    }
    if let Ok(include) = env::var("PROTOC_INCLUDE") {
        cmd.arg(format!("-I{include}"));
    }
    cmd.arg("Flight.proto");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run `{protoc}` ({e}): install Debian's protobuf-compiler libprotobuf-dev (`make setup`)")
    });
    assert!(status.success(), "`{protoc}` failed to compile proto/Flight.proto");
    println!("cargo:rerun-if-changed=Flight.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
}
