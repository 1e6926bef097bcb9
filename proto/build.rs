//! Generates the gRPC and message code. Uses `PROTOC` when set (the workspace's
//! `.cargo/config.toml` points it at `tools/protoc`) and the vendored protoc otherwise, so a
//! fresh machine needs no protoc installed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let files = ["switchyard/v1/router.proto", "switchyard/v1/wire.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("switchyard_descriptor.bin"))
        .compile_with_config(config, &files, &["."])?;
    Ok(())
}
