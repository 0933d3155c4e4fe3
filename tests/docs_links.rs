//! The documentation's relative links resolve.
//!
//! Reads `README.md` and every `docs/*.md`, finds the Markdown links outside fenced code blocks and
//! inline code (`[text](target)`, `![alt](target)` and `[label]: target` definitions), skips
//! `http://`, `https://` and `mailto:` targets, and checks every other one: the file must exist,
//! relative to the page that links to it, and a `#anchor` must be produced by a heading of the target
//! page (of the same page for a bare `#anchor`), by GitHub's rules. Anchors into files that are not
//! Markdown (`#L10` line anchors) are not checked. Every broken link is reported at once.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The Markdown files under test: `README.md`, then `docs/*.md` in name order.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("read docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The anchor GitHub gives a heading: the text lowercased, inline code's backticks, link targets and
/// every character other than letters, digits, `-`, `_` and spaces dropped, then each space turned
/// into `-`. `## Capacity: SIGTTIN, SIGTTOU` gives `capacity-sigttin-sigttou`.
fn anchor(heading: &str) -> String {
    link_texts(heading.trim())
        .chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// `text` with each inline link `[label](target)` replaced by its label, as GitHub renders a heading.
fn link_texts(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            let close = matching(&chars, i, '[', ']');
            let end = close
                .filter(|&c| chars.get(c + 1) == Some(&'('))
                .and_then(|c| matching(&chars, c + 1, '(', ')'));
            if let (Some(close), Some(end)) = (close, end) {
                out.extend(&chars[i + 1..close]);
                i = end + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The index of the bracket closing the one at `open`, counting nested pairs and skipping
/// backslash-escaped characters.
fn matching(chars: &[char], open: usize, left: char, right: char) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            c if c == left => depth += 1,
            c if c == right => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The fence a line opens or closes: its character (`` ` `` or `~`) and how many of them.
fn fence(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let c = trimmed.chars().next().filter(|&c| c == '`' || c == '~')?;
    let n = trimmed.chars().take_while(|&x| x == c).count();
    (n >= 3).then_some((c, n))
}

/// The text outside fenced code blocks, as blocks of consecutive non-blank lines, each with the
/// 1-based number of its first line. Lines inside fences come out as nothing.
fn prose_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut open: Option<(char, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        if let Some((c, n)) = open {
            let closes = fence(line).is_some_and(|(fc, fn_)| {
                fc == c && fn_ >= n && line.trim().chars().all(|x| x == c)
            });
            if closes {
                open = None;
            }
            continue;
        }
        if let Some(f) = fence(line) {
            open = Some(f);
            blocks.extend(current.take());
            continue;
        }
        if line.trim().is_empty() {
            blocks.extend(current.take());
            continue;
        }
        match &mut current {
            Some((_, block)) => {
                block.push('\n');
                block.push_str(line);
            }
            None => current = Some((index + 1, line.to_string())),
        }
    }
    blocks.extend(current);
    blocks
}

/// `block` with the content of every inline code span replaced by spaces (newlines kept), so that a
/// `[x](y)` inside backticks is not a link. A backtick run with no closing run of the same length is
/// literal, as in CommonMark.
fn mask_code_spans(block: &str) -> String {
    let chars: Vec<char> = block.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut out = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = run_at(j);
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut out[i + n..j] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + n;
            }
            None => i += n,
        }
    }
    out.into_iter().collect()
}

/// The link targets of a Markdown text, each with its 1-based line number: inline links and images
/// outside fenced code blocks and inline code, and reference definitions (`[label]: target`).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (first_line, block) in prose_blocks(text) {
        let masked = mask_code_spans(&block);
        let chars: Vec<char> = masked.chars().collect();
        let line_of = |i: usize| first_line + chars[..i].iter().filter(|&&c| c == '\n').count();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '\\' {
                i += 2;
                continue;
            }
            let close = if chars[i] == '[' {
                matching(&chars, i, '[', ']')
            } else {
                None
            };
            if let Some(close) = close {
                let after = chars.get(close + 1);
                if after == Some(&'(') {
                    if let Some(end) = matching(&chars, close + 1, '(', ')') {
                        let inner: String = chars[close + 2..end].iter().collect();
                        found.push((line_of(i), destination(&inner)));
                    }
                } else if after == Some(&':')
                    && line_start(&chars, i)
                    && chars.get(i + 1) != Some(&'^')
                {
                    let rest: String = chars[close + 2..]
                        .iter()
                        .take_while(|&&c| c != '\n')
                        .collect();
                    found.push((line_of(i), destination(&rest)));
                }
            }
            i += 1;
        }
    }
    found
}

/// Whether `[` at `i` starts its line, after at most 3 spaces: where a reference definition goes.
fn line_start(chars: &[char], i: usize) -> bool {
    let start = chars[..i]
        .iter()
        .rposition(|&c| c == '\n')
        .map_or(0, |p| p + 1);
    i - start <= 3 && chars[start..i].iter().all(|&c| c == ' ')
}

/// The destination of a link's `(...)`: `<...>` unwrapped, or up to the first space (a title follows).
fn destination(inner: &str) -> String {
    let inner = inner.trim();
    match inner.strip_prefix('<') {
        Some(rest) => rest.split('>').next().unwrap_or("").to_string(),
        None => inner.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// `%XX` escapes decoded (`%20` in a file name).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = if bytes[i] == b'%' {
            s.get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        } else {
            None
        };
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with its `.` and `..` components resolved lexically (`docs/../LICENSE` is `LICENSE`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The anchors a Markdown text's headings produce, with GitHub's `-1`, `-2`... for repeated ones.
fn heading_anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    let mut open: Option<(char, usize)> = None;
    for line in text.lines() {
        if let Some((c, n)) = open {
            if fence(line)
                .is_some_and(|(fc, fn_)| fc == c && fn_ >= n && line.trim().chars().all(|x| x == c))
            {
                open = None;
            }
            continue;
        }
        if let Some(f) = fence(line) {
            open = Some(f);
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        let level = rest.chars().take_while(|&c| c == '#').count();
        if indent > 3 || !(1..=6).contains(&level) {
            continue;
        }
        let after = &rest[level..];
        if !(after.is_empty() || after.starts_with([' ', '\t'])) {
            continue;
        }
        // An optional closing run of `#`, preceded by a space.
        let mut title = after.trim();
        let stripped = title.trim_end_matches('#');
        if stripped.is_empty() || stripped.ends_with([' ', '\t']) {
            title = stripped.trim_end();
        }
        let base = anchor(title);
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// Every broken relative link of `files`, as `path:line: [...](target): reason`, paths shown
/// relative to `root`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let shown = |p: &Path| {
        let p = normalize(p);
        p.strip_prefix(root).unwrap_or(&p).display().to_string()
    };
    let mut anchors_of: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    for file in files {
        let text =
            fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let dir = file.parent().expect("a file has a directory");
        for (line, target) in links(&text) {
            let lower = target.to_ascii_lowercase();
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|s| lower.starts_with(s))
            {
                continue;
            }
            let report = |why: String| format!("{}:{line}: ({target}): {why}", shown(file));
            if target.is_empty() {
                broken.push(report("empty target".into()));
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(percent_decode(f))),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                root.join(percent_decode(from_root))
            } else {
                dir.join(percent_decode(path))
            };
            if !resolved.exists() {
                broken.push(report(format!("{} does not exist", shown(&resolved))));
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
                continue;
            };
            if resolved.extension().is_none_or(|ext| ext != "md") {
                continue;
            }
            let key = resolved.canonicalize().unwrap_or_else(|_| resolved.clone());
            let anchors = anchors_of.entry(key).or_insert_with(|| {
                heading_anchors(&fs::read_to_string(&resolved).unwrap_or_default())
            });
            if !anchors.contains(&fragment) {
                broken.push(report(format!(
                    "no heading of {} has the anchor #{fragment}",
                    shown(&resolved)
                )));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_resolves() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = doc_files(&root);
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s) in README.md and docs/*.md:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_readme_links_every_docs_page() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).expect("read README.md");
    let linked: HashSet<PathBuf> = links(&readme)
        .into_iter()
        .map(|(_, target)| root.join(percent_decode(target.split('#').next().unwrap_or(""))))
        .collect();
    let missing: Vec<String> = doc_files(&root)
        .into_iter()
        .skip(1)
        .filter(|page| !linked.contains(page))
        .map(|page| {
            page.strip_prefix(&root)
                .unwrap_or(&page)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not link to: {}",
        missing.join(", ")
    );
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        anchor("Capacity: SIGTTIN, SIGTTOU"),
        "capacity-sigttin-sigttou"
    );
    assert_eq!(
        anchor("Sizing: how many workers"),
        "sizing-how-many-workers"
    );
    assert_eq!(anchor("New binary: SIGUSR2"), "new-binary-sigusr2");
    assert_eq!(
        anchor("The `hyperfork plan` command"),
        "the-hyperfork-plan-command"
    );
    assert_eq!(anchor("snake_case and-dashes"), "snake_case-and-dashes");
    assert_eq!(anchor("A [linked](other.md#x) word"), "a-linked-word");
    assert_eq!(anchor("What's new? (2.0)"), "whats-new-20");
    assert_eq!(anchor("Two  spaces"), "two--spaces");
    assert_eq!(anchor("Ünïcode Wörds"), "ünïcode-wörds");
}

#[test]
fn headings_give_anchors() {
    let text = "# Title\n\n## Capacity: SIGTTIN, SIGTTOU\n\n### Closed ###\n\n## Notes\n\n## Notes\n\n\
                ```sh\n# not a heading\n```\n\n#nospace\n    # indented code\n";
    let anchors = heading_anchors(text);
    let expected: HashSet<String> = [
        "title",
        "capacity-sigttin-sigttou",
        "closed",
        "notes",
        "notes-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(anchors, expected);
}

#[test]
fn links_skip_code() {
    let text = "See [a](a.md) and [`b`](b.md#x), not `[c](c.md)`.\n\
                ```rust\nlet v = [d](e);\n```\n\
                ~~~\n[f](f.md)\n~~~\n\
                Code over `two\nlines [g](g.md)` ends; ![img](i.png \"title\")\n\n\
                [ref]: <r.md#y>\n\
                [h]: h.md\n";
    let found = links(text);
    let targets: Vec<&str> = found.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(targets, ["a.md", "b.md#x", "i.png", "r.md#y", "h.md"]);
    let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [1, 1, 9, 11, 12]);
}

/// The checker reports every kind of broken link, all at once, and nothing else.
#[test]
fn broken_links_are_all_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    fs::create_dir(root.join("docs")).expect("mkdir docs");
    fs::write(root.join("LICENSE"), "MIT\n").expect("write LICENSE");
    fs::write(
        root.join("README.md"),
        "# Top\n\n## Part two\n\n[ok](docs/a.md#section-one) [ok](#part-two) [ok](LICENSE) \
         [ok](https://example.com/x#y) [ok](mailto:a@b.c)\n\
         [missing file](docs/nope.md)\n[missing anchor](docs/a.md#section-two)\n\
         [missing here](#part-three)\n[empty]()\n",
    )
    .expect("write README.md");
    fs::write(
        root.join("docs/a.md"),
        "# A\n\n## Section one\n\n[up](../README.md#top) [bad up](../README#top)\n",
    )
    .expect("write docs/a.md");
    let broken = broken_links(root, &doc_files(root));
    assert_eq!(broken.len(), 5, "{broken:#?}");
    assert!(
        broken[0].starts_with("README.md:6: (docs/nope.md): docs/nope.md does not exist"),
        "{broken:#?}"
    );
    assert!(
        broken[1].starts_with("README.md:7: (docs/a.md#section-two): no heading"),
        "{broken:#?}"
    );
    assert!(
        broken[2].starts_with("README.md:8: (#part-three): no heading of README.md"),
        "{broken:#?}"
    );
    assert!(
        broken[3].starts_with("README.md:9: (): empty target"),
        "{broken:#?}"
    );
    assert!(
        broken[4].starts_with("docs/a.md:5: (../README#top):"),
        "{broken:#?}"
    );
}
