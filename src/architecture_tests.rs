//! The layout ARCHITECTURE.md promises, checked: imports go one way (a module imports only
//! modules of a lower rank), the module map lists every top-level module, no SQL in `api/` or `console/`, and
//! no source file over 800 lines (test files excepted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The ranks of ARCHITECTURE.md's module map.
const RANKS: &[(&str, u8)] = &[
    ("model", 0),
    ("backoff", 0),
    ("metrics", 0),
    ("telemetry", 0),
    ("pg", 1),
    ("embedded_pg", 1),
    ("config", 2),
    ("source", 3),
    ("route", 3),
    ("outbox", 4),
    ("ingest", 5),
    ("deliver", 5),
    ("api", 6),
    ("console", 7),
    ("cmd", 7),
    ("app", 8),
];

/// Files of the binary crate and the crate root: they may use anything.
const OUTSIDE: &[&str] = &["lib", "main", "demo", "architecture_tests"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to: `src/outbox/queue.rs` → `outbox`.
fn top(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Every `crate::name` in the file (code and doc links alike: a doc link is a dependency too).
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // `walhook::` in doc examples and `$crate` in macros are not imports of this crate's
        // modules by path; only a bare `crate::` counts.
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn imports_go_one_way() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let from = top(f);
        if OUTSIDE.contains(&from.as_str()) {
            continue;
        }
        let from_rank =
            rank(&from).unwrap_or_else(|| panic!("{from} is missing from ARCHITECTURE.md's ranks"));
        let text = std::fs::read_to_string(f).unwrap();
        for to in crate_refs(&text) {
            if to == from {
                continue;
            }
            // Items re-exported at the crate root (`crate::Lsn`) are the model's.
            let to_rank = rank(&to).unwrap_or(0);
            if to_rank >= from_rank {
                wrong
                    .entry(format!("{} ({from}, rank {from_rank})", f.display()))
                    .or_default()
                    .push(format!("{to} (rank {to_rank})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the direction of ARCHITECTURE.md: {wrong:#?}"
    );
}

#[test]
fn the_module_map_lists_every_top_level_module() {
    let map = std::fs::read_to_string(src().join("../ARCHITECTURE.md")).unwrap();
    let mut tops: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|m| !OUTSIDE.contains(&m.as_str()))
        .collect();
    tops.sort();
    for m in &tops {
        assert!(rank(m).is_some(), "{m} has no rank in architecture_tests");
        let listed = map.contains(&format!("| `{m}/` |")) || map.contains(&format!("| `{m}` |"));
        assert!(listed, "ARCHITECTURE.md's module map does not list {m}");
    }
    for (m, _) in RANKS {
        assert!(
            tops.contains(&m.to_string()),
            "{m} is ranked but not in src/"
        );
    }
}

#[test]
fn no_sql_in_the_api_and_no_oversized_files() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if top(f) == "api" || top(f) == "console" {
            for kw in [
                "\"SELECT ",
                "\"INSERT ",
                "\"UPDATE ",
                "\"DELETE ",
                "\"WITH ",
            ] {
                assert!(
                    !text.contains(kw),
                    "{}: SQL ({kw}) in api/ or console/",
                    f.display()
                );
            }
        }
        let name = f.file_name().unwrap().to_string_lossy();
        if !name.contains("tests") {
            let lines = text.lines().count();
            assert!(lines <= 800, "{}: {lines} lines (800 at most)", f.display());
        }
    }
}
