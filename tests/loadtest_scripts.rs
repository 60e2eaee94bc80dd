//! The load-test tooling in `loadtest/` stays runnable although k6 cannot be installed
//! here: every k6 script must pass `node --check`, load under Node with stand-in k6
//! modules and declare well-formed options and thresholds, and the rate-limit header
//! checks that `ratelimit.js` relies on are unit-tested. The shell wrappers must parse.
//!
//! Needs `node` (Node.js 18 or later) on PATH; `make test` installs it when missing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// `node` from PATH, or a failure that says what to install.
fn node() -> PathBuf {
    find_on_path("node").unwrap_or_else(|| {
        panic!(
            "node (Node.js) is not on PATH, and the k6 scripts in loadtest/k6 are syntax-checked \
             with it. Install it (Debian/Ubuntu: `apt-get install nodejs`; `make test` runs \
             scripts/ensure-deps.sh test, which does) and run the tests again."
        )
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `.js` under `dir`, recursively, sorted.
fn scripts(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("js")) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Replaces every `'k6'` / `'k6/…'` module specifier after `from` (or in a bare
/// `import '…'`) with a local stub file, so the copy is a self-contained `.mjs` module.
fn stub_k6_imports(source: &str, stub: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("k6") {
        let (before, after) = rest.split_at(pos);
        let quote = before.chars().last();
        let is_specifier = matches!(quote, Some('\'') | Some('"')) && {
            let head = before[..before.len() - 1].trim_end();
            head.ends_with("from") || head.ends_with("import")
        };
        if is_specifier {
            let q = quote.expect("checked above");
            let end = after
                .find(q)
                .unwrap_or_else(|| panic!("unterminated module specifier in {after:.40}"));
            out.push_str(before);
            out.push_str(stub);
            rest = &after[end..];
        } else {
            out.push_str(before);
            out.push_str("k6");
            rest = &after[2..];
        }
    }
    out.push_str(rest);
    out
}

/// Copies `script` to `<tmp>/<name>.mjs` with its k6 imports stubbed and runs
/// `node --check` on the copy.
fn node_check(node: &Path, tmp: &Path, script: &Path) -> Output {
    let source = std::fs::read_to_string(script)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    let name = script
        .strip_prefix(repo())
        .unwrap_or(script)
        .to_string_lossy()
        .replace('/', "__");
    let copy = tmp.join(format!("{}.mjs", name.trim_end_matches(".js")));
    std::fs::write(&copy, stub_k6_imports(&source, "./k6-stub.mjs"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", copy.display()));
    run(Command::new(node).arg("--check").arg(&copy))
}

#[test]
fn k6_scripts_pass_node_check() {
    let node = node();
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        tmp.path().join("k6-stub.mjs"),
        "export default {};\nexport const check = () => true, sleep = () => {}, fail = () => {};\n",
    )
    .expect("write stub");

    let dir = repo().join("loadtest/k6");
    let found = scripts(&dir);
    for expected in [
        "smoke.js",
        "steady.js",
        "spike.js",
        "soak.js",
        "ratelimit.js",
    ] {
        assert!(
            found
                .iter()
                .any(|p| p.file_name() == Some(OsStr::new(expected))),
            "loadtest/k6/{expected} is missing (found {found:?})"
        );
    }

    let mut failures = Vec::new();
    for script in &found {
        let source = std::fs::read_to_string(script).expect("read script");
        let stubbed = stub_k6_imports(&source, "./k6-stub.mjs");
        assert!(
            !stubbed.contains("from 'k6") && !stubbed.contains("from \"k6"),
            "{}: a k6 import was not stubbed",
            script.display()
        );
        let out = node_check(&node, tmp.path(), script);
        if !out.status.success() {
            failures.push(format!("{}:\n{}", script.display(), describe(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "node --check failed:\n{}",
        failures.join("\n")
    );

    // The check does catch a syntax error.
    let broken = tmp.path().join("broken.js");
    std::fs::write(
        &broken,
        "import http from 'k6/http';\nexport default function () { http.get('x' }\n",
    )
    .expect("write broken script");
    let out = node_check(&node, tmp.path(), &broken);
    assert!(
        !out.status.success(),
        "node --check accepted a script with a syntax error:\n{}",
        describe(&out)
    );
}

#[test]
fn stubbing_rewrites_only_k6_specifiers() {
    let src = "import http from 'k6/http';\nimport { check,\n  sleep } from \"k6\";\nimport { Counter } from 'k6/metrics';\nimport { url } from './lib/common.js';\nconst k6 = 'k6/http';\n";
    let out = stub_k6_imports(src, "./s.mjs");
    assert_eq!(
        out,
        "import http from './s.mjs';\nimport { check,\n  sleep } from \"./s.mjs\";\nimport { Counter } from './s.mjs';\nimport { url } from './lib/common.js';\nconst k6 = 'k6/http';\n"
    );
}

#[test]
fn k6_scripts_load_with_well_formed_options() {
    let out = run(Command::new(node())
        .arg(repo().join("loadtest/node/check-scripts.mjs"))
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "loadtest/node/check-scripts.mjs found problems:\n{}",
        describe(&out)
    );
}

#[test]
fn ratelimit_header_checks_pass_their_unit_tests() {
    let out = run(Command::new(node())
        .arg("--test")
        .arg(repo().join("loadtest/node/ratelimit-headers.test.mjs"))
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "node --test loadtest/node/ratelimit-headers.test.mjs failed:\n{}",
        describe(&out)
    );
}

#[test]
fn loadtest_shell_scripts_parse() {
    let dir = repo().join("loadtest");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("list loadtest/") {
        let path = entry.expect("entry").path();
        if path.extension() == Some(OsStr::new("sh")) {
            let out = run(Command::new("bash").arg("-n").arg(&path));
            assert!(
                out.status.success(),
                "bash -n {}:\n{}",
                path.display(),
                describe(&out)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the wrk and curl wrappers in loadtest/"
    );
}
