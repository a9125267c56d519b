//! No module of a crate imports another that imports it back. For each crate of the workspace,
//! each top-level module (a file or a directory under `src/`) depends on the modules its code
//! names as `crate::NAME` (tests and comments left out); the graph must have no cycle. A path
//! through a crate-root re-export (`crate::Type`) is not seen: name the module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The code of every `.rs` file under `path` (a file or a directory), each file's part before
/// its first `#[cfg(test)]`, comment lines left out.
fn code(path: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir").flatten() {
                stack.push(e.path());
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).expect("read source");
            let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in before_tests.lines() {
                if !line.trim_start().starts_with("//") {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// The names following `crate::` in `code`, and the first name of each entry of a
/// `crate::{a, b::c}` group.
fn named(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for part in code.split("crate::").skip(1) {
        if let Some(group) = part.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            out.extend(inner.split(',').map(|e| ident(e.trim())));
        } else {
            out.insert(ident(part));
        }
    }
    out
}

/// Each top-level module of the crate at `src` and the modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    for e in std::fs::read_dir(src).expect("src").flatten() {
        let p = e.path();
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if matches!(name.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
            modules.entry(name).or_insert_with(Vec::new).push(p);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(m, paths)| {
            let deps = paths
                .iter()
                .flat_map(|p| named(&code(p)))
                .filter(|d| names.contains(d) && *d != m)
                .collect();
            (m, deps)
        })
        .collect()
}

/// A cycle of `g`, as the modules along it, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(m, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.push(root().join("examples/customer-summary/src"));
    assert!(crates.len() >= 9, "{crates:?}");
    let mut cycles = Vec::new();
    for src in &crates {
        if let Some(c) = cycle(&graph(src)) {
            cycles.push(format!("{}: {}", src.display(), c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn a_cycle_is_found_and_named() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("run", vec!["step", "ports"]),
        ("step", vec!["config"]),
        ("config", vec!["run"]),
        ("ports", vec![]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        cycle(&g),
        Some(
            vec!["config", "run", "step", "config"]
                .into_iter()
                .map(str::to_string)
                .collect()
        )
    );
    assert_eq!(
        named("use crate::{run::Ports, step};\nlet x = crate::sqs::MAX;").len(),
        3
    );
}
