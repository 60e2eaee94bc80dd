//! The documented edge-features example (`conf/examples/edge.yaml`) passes `tollgate check`,
//! so what the README shows is what the gateway accepts.

mod support;

use support::*;

#[tokio::test]
async fn the_edge_example_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("conf/examples/edge.yaml")).unwrap();
    let out = Gateway::check(&text).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}
