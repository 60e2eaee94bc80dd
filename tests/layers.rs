//! The modules stay in layers: no two top-level modules of `src/` import each other, directly
//! or through others (docs/ARCHITECTURE.md, "Modules, in layers"). A module's imports are the
//! `crate::<module>` paths in its files outside unit tests, doc comments included (a doc link
//! to a module above is a dependency too), as `../shared/tools/modcycles.py src` counts them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `path` (or `path` itself).
fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules each top-level module of `src` refers to.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        modules.entry(name).or_default().extend(files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, files) in &modules {
        let mut uses = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for line in code.lines() {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    // `crate::a::b` or `crate::{a, b::c}`.
                    let group = match rest.strip_prefix('{') {
                        Some(inner) => inner.split('}').next().unwrap_or(""),
                        None => rest,
                    };
                    for part in group.split(',') {
                        let name: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if names.contains(&name) && &name != module {
                            uses.insert(name);
                        }
                        if !rest.starts_with('{') {
                            break;
                        }
                    }
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn top_level_modules_import_each_other_in_no_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "found only {:?}", graph.keys());
    // A module is in a cycle when it can reach itself.
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                cycles.push(start.clone());
                break;
            }
            if seen.insert(next) {
                stack.extend(graph[next].iter());
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "these modules import themselves through others: {cycles:?}\n{graph:#?}"
    );
}
