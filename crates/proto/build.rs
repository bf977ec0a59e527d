//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: cargo reuses a compiled build
    // script for a checkout at another path sharing the target directory (a CI clone), and a
    // baked-in path would point at the other checkout, or at nothing once it is gone.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = format!("{manifest_dir}/../../proto");
    let root = root.as_str();
    let files = [
        "raftmq/v1/common.proto",
        "raftmq/v1/namesrv.proto",
        "raftmq/v1/broker.proto",
        "raftmq/v1/raft.proto",
        "apache/rocketmq/v2/definition.proto",
        "apache/rocketmq/v2/service.proto",
    ];
    for file in files {
        // A directory's mtime does not change when a file in it does: name every file.
        println!("cargo:rerun-if-changed={root}/{file}");
    }
    let fds = protox::compile(files, [root])?;
    tonic_prost_build::configure()
        // Encodes each message into a buffer sized for it (see `codec` in src/lib.rs).
        .codec_path("crate::codec::SizedCodec")
        // A Raft payload (a batch of entries) is sliced out of the received buffer, not copied.
        .bytes(".raftmq.v1.RaftEnvelope.payload")
        // A pulled body is encoded from the broker's decoded log entry without a copy of its
        // own; a client receives it as a slice of the answer's buffer.
        .bytes(".raftmq.v1.StoredMessage.body")
        .compile_fds(fds)?;
    Ok(())
}
