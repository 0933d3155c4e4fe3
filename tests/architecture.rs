//! The layout's rules, checked on the source: the modules of `src/` import each other without a cycle,
//! and each top-level area (`app`, `config`, `jobs`, `master`, `worker`, `shared`, …) only reaches into
//! the areas below it.
//!
//! A module is a file (`src/worker/serve.rs` is `worker::serve`, `src/worker/mod.rs` is `worker`); an
//! import is any `crate::a::b` path in it, outside comments, resolved to the longest module that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src/`: `worker::serve`, `worker` for `worker/mod.rs`, `` for
/// `lib.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without `//` comments (doc comments included) and string-free enough for paths.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::` paths a file uses, each as its segments (braces expanded one level).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
            .collect();
        let path = path.trim_end_matches("::");
        if let Some((head, _)) = path.split_once('{') {
            // `crate::a::{b, c::d}`: the group's members.
            let head: Vec<String> = head
                .trim_end_matches("::")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let group = rest[rest.find('{').map_or(0, |i| i + 1)..]
                .split('}')
                .next()
                .unwrap_or("");
            for member in group.split(',') {
                let mut p = head.clone();
                p.extend(
                    member
                        .trim()
                        .split("::")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                out.push(p);
            }
        } else {
            out.push(path.split("::").map(String::from).collect());
        }
    }
    out
}

/// The module graph: module → modules it imports (never itself).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut g = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).expect("read a source file"));
        let mut deps = BTreeSet::new();
        for path in crate_paths(&code) {
            // The longest prefix of the path that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m));
            if let Some(t) = target {
                if t != *module {
                    deps.insert(t);
                }
            }
        }
        g.insert(module.clone(), deps);
    }
    g
}

/// A cycle in `g`, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// The top-level area of a module: `worker` for `worker::serve`, the file name for a top-level file.
fn area(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    assert!(g.len() > 20, "modules found: {:?}", g.keys());
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn areas_only_reach_down() {
    let g = graph();
    let mut areas: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in &g {
        if m.is_empty() {
            continue; // lib.rs: the facade re-exports from every area.
        }
        for d in deps {
            if area(d) != area(m) && !d.is_empty() {
                areas
                    .entry(area(m).to_string())
                    .or_default()
                    .insert(area(d).to_string());
            }
        }
    }
    if let Some(cycle) = find_cycle(&areas) {
        let detail: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let uses: Vec<String> = g
                    .iter()
                    .filter(|(m, _)| area(m) == w[0])
                    .flat_map(|(m, deps)| {
                        deps.iter()
                            .filter(|d| area(d) == w[1])
                            .map(move |d| format!("{m} uses {d}"))
                    })
                    .collect();
                uses.join(", ")
            })
            .collect();
        panic!(
            "areas import each other in a circle: {}\n{}",
            cycle.join(" -> "),
            detail.join("\n")
        );
    }
}

#[test]
fn the_checker_sees_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert!(find_cycle(&g).is_some());
    let paths = crate_paths("use crate::a::{b, c::d};\nlet x = crate::e::f(1);");
    assert_eq!(
        paths,
        vec![vec!["a", "b"], vec!["a", "c", "d"], vec!["e", "f"]]
    );
}
