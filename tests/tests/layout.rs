//! The source's layering: no circle of imports among the files of src/. A file may use its
//! parent module's items (a child module's `super::Type`), and a module's mod.rs declares and
//! uses its children; every other reference (`crate::…`, `super::sibling::…`) is an edge, and
//! the edges must form no cycle.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["llm", "classify"]`) of every .rs file under src/.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.to_vec();
            if name != "mod" && name != "lib" {
                module.push(name);
            }
            out.insert(module, path);
        }
    }
}

/// The paths a file names after `crate::` or `super::` (comments left out).
fn references(source: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = vec![];
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (start, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            let rest = &code[start..];
            let mut segments: Vec<String> = rest
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            let mut base = if segments.first().map(String::as_str) == Some("crate") {
                segments.remove(0);
                vec![]
            } else {
                let mut base = own.to_vec();
                while segments.first().map(String::as_str) == Some("super") {
                    segments.remove(0);
                    base.pop();
                }
                base
            };
            base.extend(segments);
            found.push(base);
        }
    }
    found
}

#[test]
fn no_circle_of_imports_among_the_source_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let mut files = BTreeMap::new();
    modules(&src, &[], &mut files);
    assert!(files.len() > 20, "src/ holds the extension's files");
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).unwrap();
        for reference in references(&source, module) {
            // The longest prefix of the path that is a file of ours.
            let target = (0..=reference.len())
                .rev()
                .map(|n| reference[..n].to_vec())
                .find(|prefix| files.contains_key(prefix));
            if let Some(target) = target {
                // A file's own items, and its ancestors' (which declare it), are no edge.
                if !module.starts_with(&target) {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    let edge_count: usize = edges.values().map(BTreeSet::len).sum();
    println!(
        "layout: {} files, {edge_count} imports between them",
        files.len()
    );
    assert!(edge_count > 10, "the imports were found");
    // Depth-first search; a node met again on the current path closes a circle.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.clone());
            return Some(circle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in files.keys() {
        let circle = visit(module, &edges, &mut vec![], &mut done);
        assert!(
            circle.is_none(),
            "a circle of imports: {}",
            circle
                .unwrap_or_default()
                .iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
}
