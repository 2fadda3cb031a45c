//! Discovers what the binary embeds and the tests enumerate, so no list is kept by hand:
//! - `schemas/tables/*.toml` → `$OUT_DIR/table_files.rs` (the table catalog);
//! - `pipelines/*.{toml,sql}` and `pipelines/views/*.sql` → `$OUT_DIR/pipeline_files.rs` (the
//!   built-in pipeline definitions);
//! - `tests/pipelines/<pipeline>/<case>/` and `tests/pipelines/views/<view>/<case>/` →
//!   `$OUT_DIR/golden_cases.rs`, one test per golden case (`golden::cases::<pipeline>::<case>`),
//!   so a failure names its case.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    for dir in ["schemas/tables", "pipelines", "tests/pipelines"] {
        println!("cargo:rerun-if-changed={dir}");
    }

    let tables = files(&root.join("schemas/tables"), &[".toml"]);
    write(
        &out.join("table_files.rs"),
        &embedded("TABLE_FILES", "schemas/tables", &tables, ""),
    );

    let mut pipelines = files(&root.join("pipelines"), &[".toml", ".sql"]);
    let views = files(&root.join("pipelines/views"), &[".sql"]);
    let mut text = embedded("PIPELINE_FILES", "pipelines", &pipelines, "");
    text.push_str(&embedded("VIEW_FILES", "pipelines/views", &views, "views/"));
    pipelines.extend(views);
    write(&out.join("pipeline_files.rs"), &text);

    let mut golden = String::new();
    let cases_root = root.join("tests/pipelines");
    let mut subjects: Vec<(String, PathBuf)> = dirs(&cases_root)
        .into_iter()
        .filter(|d| d != "views")
        .map(|d| (d.clone(), cases_root.join(&d)))
        .collect();
    subjects.extend(
        dirs(&cases_root.join("views"))
            .into_iter()
            .map(|d| (format!("views/{d}"), cases_root.join("views").join(&d))),
    );
    let ident = |s: &str| s.replace(['/', '-', '.'], "_").to_lowercase();
    for (subject, dir) in subjects {
        writeln!(
            golden,
            "mod {} {{\n    use super::golden_case;\n",
            ident(&subject)
        )
        .expect("writing to a string");
        for case in dirs(&dir) {
            writeln!(
                golden,
                "    #[tokio::test]\n    async fn {}() {{\n        golden_case({subject:?}, {case:?}).await;\n    }}\n",
                ident(&case)
            )
            .expect("writing to a string");
        }
        golden.push_str("}\n\n");
    }
    write(&out.join("golden_cases.rs"), &golden);
}

/// `const NAME: &[(&str, &str)]` of (`prefix` + file name, contents), sorted by name.
fn embedded(name: &str, dir: &str, files: &[String], prefix: &str) -> String {
    let mut s = format!(
        "/// Embedded from `{dir}/` by build.rs.\npub const {name}: &[(&str, &str)] = &[\n"
    );
    // Paths from `CARGO_MANIFEST_DIR` as the crate compiles, not as this script ran: a target
    // folder shared by two checkouts (worktrees, a CI cache) keeps this output while the other
    // checkout compiles, and an absolute path would point into the first one.
    for f in files {
        writeln!(
            s,
            "    ({:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),",
            format!("{prefix}{f}"),
            format!("/{dir}/{f}")
        )
        .expect("writing to a string");
    }
    s.push_str("];\n");
    s
}

fn files(dir: &Path, suffixes: &[&str]) -> Vec<String> {
    entries(dir, |path, name| {
        path.is_file() && suffixes.iter().any(|s| name.ends_with(s))
    })
}

fn dirs(dir: &Path) -> Vec<String> {
    entries(dir, |path, _| path.is_dir())
}

/// The names of `dir`'s entries that `keep` accepts, sorted (none when it cannot be read).
fn entries(dir: &Path, keep: impl Fn(&Path, &str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| (e.path(), e.file_name().to_string_lossy().to_string()))
                .filter(|(path, name)| keep(path, name))
                .map(|(_, name)| name)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn write(path: &Path, text: &str) {
    // Unchanged output keeps its timestamp, so nothing recompiles for nothing.
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).expect("writing to OUT_DIR");
    }
}
