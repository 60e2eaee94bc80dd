//! The documented edge-features example (`conf/examples/edge.yaml`) passes `tollgate check`,
//! so what the README shows is what the gateway accepts.

#[test]
fn the_edge_example_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(root.join("conf/examples/edge.yaml"))
        .output()
        .expect("run tollgate check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
