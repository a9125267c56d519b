//! The sample events in the repository's `events/` folder (the ones `sam local invoke` and the
//! docs use), read for the tests that check every sample still parses.

use std::path::PathBuf;

use crate::repo_root;

/// The repository's `events/` folder.
pub fn events_dir() -> PathBuf {
    repo_root().join("events")
}

/// The files of [`events_dir`] whose name `keep` accepts, as `(file name, text)`, sorted by
/// name.
///
/// # Panics
///
/// Panics when the folder or one of the kept files cannot be read: a test without its samples
/// must fail, not pass empty.
pub fn sample_events(keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let dir = events_dir();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("events/ exists") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !keep(&name) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        found.push((name, text));
    }
    found.sort();
    found
}
