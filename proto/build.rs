//! Compiles `proto/sup/v1/sup.proto` with protox (pure Rust), so building
//! needs no `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sup/v1/sup.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
