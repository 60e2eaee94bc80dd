//! `deploy/systemd/tollgate.service` passes `systemd-analyze verify` with nothing to say (an
//! unknown key or a bad value is only a warning there, so any output fails the test), with
//! the binary this build made in place of `/usr/local/bin/tollgate`.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/tollgate.service")).unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    assert!(
        unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tollgate", env!("CARGO_BIN_EXE_tollgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect(
            "systemd-analyze (Debian's systemd package; scripts/ensure-deps.sh test installs it)",
        );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let about_the_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("tollgate.service"))
        .collect();
    assert!(about_the_unit.is_empty(), "{said}");
}
