//! Compiles `marc/v1/embedder.proto` with protox (pure Rust, no system `protoc`), generates the prost messages
//! and the tonic client and server from the resulting descriptor set, and writes the encoded descriptor set to
//! `OUT_DIR/marc_descriptor.bin` for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO: &str = "marc/v1/embedder.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);

    // Source info (comments) is kept: prost turns it into rustdoc and reflection clients can show it.
    let fds = protox::compile([PROTO], ["."])?;
    fs::write(out_dir.join("marc_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
