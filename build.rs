//! Embeds the portal (`portal/dist`, built by `npm run build` in `portal/`) into the binary:
//! writes `$OUT_DIR/portal_assets.rs`, a table of every file with its content type and an
//! entity tag. Without a built portal there is nothing to embed, and the build says how to
//! make one rather than shipping a binary whose `/portal` is missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    grpc(&root);
    portal(&root);
}

/// The gRPC contract (`openapi/grpc_predict_v2.proto`) as Rust: parsed by protox, so no
/// `protoc` is needed; the server side only, with `bytes` fields shared rather than copied.
fn grpc(root: &Path) {
    let proto = root.join("openapi/grpc_predict_v2.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [root.join("openapi")]).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .bytes(".inference")
        .codec_path("crate::grpc::codec::CheckedCodec")
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the gRPC service: {e}"));
}

fn portal(root: &Path) {
    let dist = root.join("portal/dist");
    println!("cargo:rerun-if-changed=portal/dist");
    if !dist.join("index.html").is_file() {
        panic!(
            "\n\nportal/dist/index.html is missing: the tessera binary embeds the portal, so build it first:\n\n    \
             (cd portal && npm ci && npm run build)\n\n\
             deploy/local/up.sh and deploy/local/test.sh do this by themselves.\n\n"
        );
    }
    let mut files = Vec::new();
    collect(&dist, &mut files);
    files.sort();
    let mut table = String::from("/// (path under /portal/, content type, entity tag, bytes)\npub static ASSETS: &[(&str, &str, &str, &[u8])] = &[\n");
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file.strip_prefix(&dist).unwrap().to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let etag = format!("\"{:016x}\"", fnv1a(&bytes));
        writeln!(table, "    ({relative:?}, {:?}, {etag:?}, include_bytes!({:?})),", content_type(&relative), file.display().to_string())
            .unwrap();
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("portal_assets.rs");
    std::fs::write(out, table).expect("write portal_assets.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A content hash for entity tags: stable across builds of the same bytes, no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}
