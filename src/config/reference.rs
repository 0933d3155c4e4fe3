//! The configuration reference table, generated from the declarations: one row per setting with its
//! flag, environment variables, TOML key, default and description, in Markdown.
//!
//! `docs/configuration.md` holds the table between [`START`] and [`END`]; a test checks it is the
//! generated one. After changing a declaration, rewrite it with
//! `cargo test --lib write_the_docs_table -- --ignored`.

use super::declare::{Declared, toml_order};
use super::kinds::Form;
use super::settings::ALL;

/// The comment after which the docs hold the table.
pub(crate) const START: &str = "<!-- settings-table:start -->";
/// The comment before which the docs' table ends.
pub(crate) const END: &str = "<!-- settings-table:end -->";

/// The Markdown table of every declared setting, in declaration order, TOML tables (`[[jobs]]`)
/// last as in a TOML file.
pub(crate) fn markdown_table() -> String {
    let mut out = String::from(
        "| Flag | Environment | TOML key | Default | Description |\n\
         |------|-------------|----------|---------|-------------|\n",
    );
    for d in toml_order(ALL) {
        out.push_str(&row(d));
    }
    out
}

/// One setting's row.
fn row(d: &dyn Declared) -> String {
    let about = d.about();
    let flag = match (about.flag, about.short) {
        (None, _) => "—".to_string(),
        (Some(f), short) => {
            let value = match about.value_name {
                Some(v) if d.form() != Form::Switch => format!(" {v}"),
                _ => String::new(),
            };
            let short = short.map_or_else(String::new, |c| format!("`-{c}`, "));
            let aliases: String = about.aliases.iter().map(|a| format!(", `{a}`")).collect();
            format!("{short}`{f}{value}`{aliases}")
        }
    };
    let env = if about.env.is_empty() {
        "—".to_string()
    } else {
        let names: Vec<String> = about.env.iter().map(|n| format!("`{n}`")).collect();
        names.join(", ")
    };
    let toml = match (about.toml, d.form()) {
        (None, _) => "—".to_string(),
        (Some(k), Form::Tables) => format!("`[[{k}]]`"),
        (Some(k), _) => format!("`{k}`"),
    };
    let default = match (about.default, about.default_text()) {
        (Some(_), Some(v)) => format!("`{v}`"),
        (None, Some(text)) => text.to_string(),
        (_, None) => "—".to_string(),
    };
    let cells = [flag, env, toml, default, about.help_text()];
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn docs_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")
    }

    /// The docs' text split around the table: before (through [`START`]), table, after.
    fn split(text: &str) -> (&str, &str, &str) {
        let start = text
            .find(START)
            .expect("docs/configuration.md lacks the start marker")
            + START.len();
        let len = text[start..]
            .find(END)
            .expect("docs/configuration.md lacks the end marker");
        (
            &text[..start],
            &text[start..start + len],
            &text[start + len..],
        )
    }

    #[test]
    fn the_docs_hold_the_generated_table() {
        let text = std::fs::read_to_string(docs_path()).expect("docs/configuration.md");
        let (_, table, _) = split(&text);
        assert_eq!(
            table.trim(),
            markdown_table().trim(),
            "docs/configuration.md is out of date: run `cargo test --lib write_the_docs_table -- --ignored`"
        );
    }

    /// Rewrites the table in `docs/configuration.md` (run on purpose, with `--ignored`).
    #[test]
    #[ignore]
    fn write_the_docs_table() {
        let text = std::fs::read_to_string(docs_path()).expect("docs/configuration.md");
        let (before, _, after) = split(&text);
        let new = format!("{before}\n{}{after}", markdown_table());
        std::fs::write(docs_path(), new).expect("writing docs/configuration.md");
    }

    #[test]
    fn every_default_parses_and_passes_its_check() {
        for d in ALL {
            let name = d.about().name();
            assert!(d.check_default().is_ok(), "{name}: {:?}", d.check_default());
            assert!(
                !(d.about().default.is_some() && d.about().unset.is_some()),
                "{name}: a default and an unset text"
            );
        }
    }

    #[test]
    fn every_setting_has_a_flag_or_a_toml_key_and_help() {
        for d in ALL {
            let about = d.about();
            assert!(about.flag.is_some() || about.toml.is_some(), "{:?}", about);
            assert!(
                about.flag.is_none_or(|f| f.starts_with("--")),
                "{:?}",
                about
            );
            assert!(!about.help_text().is_empty(), "{:?}", about);
        }
    }

    #[test]
    fn every_toml_key_is_in_the_example_file() {
        let example = include_str!("../../config/hyperfork.toml");
        for d in ALL {
            let Some(key) = d.about().toml else {
                continue;
            };
            let line = match d.form() {
                Form::Tables => format!("# [[{key}]]"),
                _ => format!("# {key} = "),
            };
            assert!(
                example.lines().any(|l| l.starts_with(&line)),
                "config/hyperfork.toml has no `{line}` line"
            );
        }
    }
}
