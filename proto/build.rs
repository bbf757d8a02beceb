//! Compiles `proto/sup/v1/sup.proto`, and our subset of etcd's v3 API
//! (`proto/etcd/v3/`, for supd's etcd store), with protox (pure Rust), so
//! building needs no `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sup/v1/sup.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    println!("cargo:rerun-if-changed=src/codec.rs");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-stream buffers: supd holds one stream per node.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;

    // A client of etcd only: nothing of sup serves etcd's API.
    let etcd = ["proto/etcd/v3/kv.proto", "proto/etcd/v3/rpc.proto"];
    for file in etcd {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(etcd, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
