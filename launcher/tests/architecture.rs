//! The crate's import directions, checked: every `crate::MODULE` path in
//! `src/` must follow an edge of the table in the README's "How the pieces
//! fit" section (written down once, there), and the table itself must have
//! no cycle. A new import against the direction fails here, with the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const TABLE_START: &str = "<!-- module imports: begin -->";
const TABLE_END: &str = "<!-- module imports: end -->";

/// `module -> modules it may import`, from the README's table.
fn allowed_edges() -> BTreeMap<String, BTreeSet<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find(TABLE_START)
        .expect("the README has the module table");
    let end = readme.find(TABLE_END).expect("the module table ends");
    let mut edges = BTreeMap::new();
    for row in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let module = cells[1].trim_matches('`').to_owned();
        let imports = cells[2]
            .split(',')
            .map(|name| name.trim().trim_matches('`').to_owned())
            .filter(|name| !name.is_empty() && name != "—")
            .collect();
        edges.insert(module, imports);
    }
    assert!(edges.len() >= 8, "the module table lost rows: {edges:?}");
    edges
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("readable source tree") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The crate modules a file names as `crate::NAME` or in a
/// `crate::{…}` group (over several lines too), outside comments.
fn imported_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let is_name = |c: char| c.is_alphanumeric() || c == '_';
    let mut modules = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_name) {
            continue; // `other_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of each top-level item of the group.
            let mut depth = 0;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_name(c) => {
                        let name: String =
                            group[index..].chars().take_while(|c| is_name(*c)).collect();
                        modules.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
            continue;
        }
        let name: String = rest.chars().take_while(|c| is_name(*c)).collect();
        if !name.is_empty() {
            modules.insert(name);
        }
    }
    modules
}

#[test]
fn imports_follow_the_allowed_directions() {
    let edges = allowed_edges();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&source, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&source).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if ["lib", "main", "cli", "cluster_main"].contains(&module.as_str()) {
            continue; // the crate root and the binary may use every module
        }
        let Some(allowed) = edges.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the README's table",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable");
        for imported in imported_modules(&text) {
            if imported != module && !allowed.contains(&imported) {
                wrong.push(format!(
                    "{}: `{module}` imports `{imported}`",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the allowed direction:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_allowed_directions_have_no_cycle() {
    let edges = allowed_edges();
    // Depth-first search for a module that reaches itself.
    fn reaches(
        edges: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        target: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        edges.get(from).into_iter().flatten().any(|next| {
            next == target || (seen.insert(next.clone()) && reaches(edges, next, target, seen))
        })
    }
    for module in edges.keys() {
        assert!(
            !reaches(&edges, module, module, &mut BTreeSet::new()),
            "`{module}` imports itself through others"
        );
    }
    for (module, imports) in &edges {
        for imported in imports {
            assert!(
                edges.contains_key(imported),
                "`{module}` may import `{imported}`, which is not a row"
            );
        }
    }
}

#[test]
fn the_reader_finds_every_spelling_of_an_import() {
    let found = imported_modules(
        "use crate::api::Command;\nuse crate::{\n    spec,\n    devices::{bus::Bus, ged},\n    helpers,\n};\nlet x = crate::vmm::run();\n// crate::control in a comment\nuse vmpod_crate::launch;\n",
    );
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["api", "devices", "helpers", "spec", "vmm"]);
}
