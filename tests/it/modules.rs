//! The code's shape: no import cycles between top-level modules, nor between the sibling
//! modules of one module (e.g. `pipeline::definition` ↔ `pipeline::session`, or an MCP tool
//! file and the server it is a tool of). A module is a file or folder under `src/`; it
//! depends on another when its code (comments and `#[cfg(test)] mod tests` aside) names it by
//! `crate::other` or `super::sibling`. A failure names the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` as (module path, code).
fn sources() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut path: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            if path == ["lib"] || path == ["main"] {
                return None;
            }
            Some((path, code(&std::fs::read_to_string(&p).unwrap())))
        })
        .collect()
}

/// `text` without comments and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else if rest.starts_with("//") {
            rest = rest.split_once('\n').map_or("", |(_, after)| after);
            out.push('\n');
        } else if rest.starts_with("'\"'") || rest.starts_with("'\\\"'") {
            // A quote as a char literal.
            let len = if rest.starts_with("'\"'") { 3 } else { 4 };
            rest = &rest[len..];
        } else if let Some(r) = rest.strip_prefix("r#\"") {
            rest = r.split_once("\"#").map_or("", |(_, after)| after);
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            // Strings may hold `crate::` or `//` (URLs): skip them whole.
            let mut chars = rest[1..].char_indices();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        end = i + 2;
                        break;
                    }
                    _ => {}
                }
            }
            out.push_str("\"\"");
            rest = &rest[end.min(rest.len())..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The identifiers following `prefix` in `code` (`crate::` → top-level names).
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .filter(|(i, _)| {
            // Not the tail of a longer path (`foo::crate::`) or identifier.
            !code[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(i, _)| {
            code[i + prefix.len()..]
                .split("::")
                .map(|seg| {
                    seg.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")
                })
                .take_while(|seg| !seg.is_empty())
                .collect()
        })
        .collect()
}

/// A cycle in `graph`, if any, as the path around it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut c = stack[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let files = sources();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(p, _)| p.clone()).collect();
    let is_module = |p: &[String]| modules.contains(p);
    // Edges between the children of each parent ("" for the crate root).
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (path, code) in &files {
        let mut targets: Vec<Vec<String>> = names_after(code, "crate::")
            .into_iter()
            .map(|segs| segs.into_iter().map(str::to_string).collect())
            .collect();
        if path.len() >= 2 {
            let parent = &path[..path.len() - 1];
            for segs in names_after(code, "super::") {
                let mut p = parent.to_vec();
                p.extend(segs.into_iter().map(str::to_string));
                targets.push(p);
            }
        }
        for target in targets {
            // The deepest prefix of `target` that is a module; compare it with `path` at the
            // level where they part.
            let depth = (1..=target.len())
                .rev()
                .find(|n| is_module(&target[..*n]))
                .unwrap_or(0);
            let target = &target[..depth];
            let common = path.iter().zip(target).take_while(|(a, b)| a == b).count();
            if common == path.len() || common == target.len() {
                // The module itself, its own children, or its ancestors (`super::x` items).
                continue;
            }
            let parent = path[..common].join("::");
            graphs
                .entry(parent)
                .or_default()
                .entry(path[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    let cycles: Vec<String> = graphs
        .iter()
        .filter_map(|(parent, g)| {
            cycle(g).map(|c| {
                let within = if parent.is_empty() {
                    "top-level modules".to_string()
                } else {
                    format!("modules of {parent}")
                };
                format!("{within}: {}", c.join(" → "))
            })
        })
        .collect();
    assert!(
        !graphs.get("").is_none_or(|g| g.is_empty()),
        "found no dependencies at all: the scan is broken"
    );
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The scan itself: comments, strings and test modules do not count; `super::` resolves to a
/// sibling; a cycle is found and named.
#[test]
fn the_scan_sees_code_only_and_finds_cycles() {
    let c = code(
        "use crate::a::b; // crate::x\n/* crate::y */ let s = \"crate::z\";\n#[cfg(test)]\nmod tests { use crate::w; }",
    );
    let names: Vec<Vec<&str>> = names_after(&c, "crate::");
    assert_eq!(names, vec![vec!["a", "b"]]);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    let mut acyclic = g.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&acyclic), None);
}
