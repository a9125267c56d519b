//! Every setting in one table: the environment variables the functions read, the ones
//! `template.yaml` sets and the rows of `docs/configuration.md` agree. A variable read in code
//! and not in the table, set by the template and not in the table, or in the table and read
//! nowhere turns this red.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Variables Lambda sets for every function; the functions read them, nobody configures them.
const SET_BY_LAMBDA: &[&str] = &[
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
];

/// The crates whose code runs in the deployed functions.
const FUNCTION_CRATES: &[&str] = &[
    "qo-core",
    "qo-orchestrator",
    "qo-worker",
    "qo-lambda",
    "qo-aws",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_name(s: &str) -> bool {
    s.len() > 1
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The quoted names on `line`.
fn quoted_names(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| is_name(s))
        .map(str::to_string)
        .collect()
}

/// Each `.rs` file under `dir`, its code before any `#[cfg(test)]`, comment lines left out.
fn code_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("read source");
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                out.extend(
                    code.lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .map(str::to_string),
                );
            }
        }
    }
    out
}

/// The variables `docs/configuration.md`'s tables name, one row each.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).expect("the doc");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| is_name(n))
        .map(str::to_string)
        .collect()
}

/// The variables read through an `Env` (`env.get("NAME")`, `env.seconds("NAME", ...)`, ...)
/// in the functions' crates.
fn read_by_functions() -> BTreeSet<String> {
    FUNCTION_CRATES
        .iter()
        .flat_map(|c| code_lines(&root().join("crates").join(c).join("src")))
        .filter(|l| l.contains("env."))
        .flat_map(|l| quoted_names(&l))
        .collect()
}

/// The keys of every `Variables:` block of `template.yaml`.
fn set_by_template() -> BTreeSet<String> {
    let t = std::fs::read_to_string(root().join("template.yaml")).expect("template.yaml");
    let mut out = BTreeSet::new();
    let mut indent: Option<usize> = None;
    for line in t.lines() {
        let lead = line.len() - line.trim_start().len();
        if line.trim_end().ends_with("Variables:") {
            indent = Some(lead);
            continue;
        }
        match indent {
            Some(i) if lead > i && !line.trim().is_empty() => {
                if lead == i + 2
                    && let Some((key, _)) = line.trim().split_once(':')
                    && is_name(key)
                {
                    out.insert(key.to_string());
                }
            }
            Some(_) if line.trim().is_empty() => {}
            _ => indent = None,
        }
    }
    out
}

#[test]
fn every_variable_the_functions_read_is_in_the_settings_table() {
    let doc = documented();
    assert!(doc.len() > 50, "the table was not read: {doc:?}");
    let read = read_by_functions();
    assert!(
        read.contains("QUEUE_URL") && read.contains("API_BASE_URL"),
        "{read:?}"
    );
    let missing: Vec<&String> = read
        .iter()
        .filter(|n| !doc.contains(*n) && !SET_BY_LAMBDA.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the functions, not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_variable_the_template_sets_is_in_the_settings_table() {
    let doc = documented();
    let set = set_by_template();
    assert!(
        set.contains("RESULT_DESTINATIONS") && set.len() > 25,
        "{set:?}"
    );
    let missing: Vec<&String> = set.iter().filter(|n| !doc.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "set by template.yaml, not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_variable_in_the_settings_table_is_read_somewhere() {
    let code: String = std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
        .flat_map(|c| code_lines(&c.path().join("src")))
        .collect::<Vec<_>>()
        .join("\n");
    let unread: Vec<String> = documented()
        .into_iter()
        .filter(|n| !code.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        unread.is_empty(),
        "in docs/configuration.md, read nowhere: {unread:?}"
    );
}
