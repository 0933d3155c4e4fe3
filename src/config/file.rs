//! The TOML file: read once, its keys kept with their positions so every error can name the file,
//! the line and the key. Keys that no setting declares are errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::error::ConfigError;

/// A TOML configuration file, parsed.
#[derive(Debug)]
pub(crate) struct File {
    path: PathBuf,
    text: String,
    keys: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

impl File {
    /// Reads and parses `path`; every top-level key must be one of `known`.
    pub fn read(path: &Path, known: &[&str]) -> Result<File, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        File::parse(path, text, known)
    }

    /// Parses `text`, read from `path`.
    pub fn parse(path: &Path, text: String, known: &[&str]) -> Result<File, ConfigError> {
        let keys = match toml::from_str::<BTreeMap<Spanned<String>, Spanned<toml::Value>>>(&text) {
            Ok(keys) => keys,
            Err(e) => return Err(syntax_error(path, &text, &e)),
        };
        let file = File {
            path: path.to_path_buf(),
            text,
            keys,
        };
        // The first unknown key in the file's order, as serde's `deny_unknown_fields` reports it.
        let unknown = (file.keys.keys())
            .filter(|k| !known.contains(&k.get_ref().as_str()))
            .min_by_key(|k| k.span().start);
        if let Some(key) = unknown {
            let message = match nearest(key.get_ref(), known) {
                Some(near) => format!("unknown field `{}`; did you mean `{near}`?", key.get_ref()),
                None => {
                    let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                    format!(
                        "unknown field `{}`, expected one of {}",
                        key.get_ref(),
                        expected.join(", ")
                    )
                }
            };
            return Err(file.error(key.span(), message));
        }
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A top-level key's value, with its position.
    pub fn value(&self, key: &str) -> Option<&Spanned<toml::Value>> {
        self.keys.get(key)
    }

    /// An error at the line holding `span`.
    pub fn error(&self, span: Range<usize>, message: String) -> ConfigError {
        error_at(&self.path, &self.text, span, message)
    }
}

/// The known name most like `given` (ignoring case, `-` and `_`), if one is close enough, as clap
/// suggests a flag.
pub(crate) fn nearest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let given = norm(given);
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&given, &norm(k)), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// An error in `path` at the line of `text` holding `span`.
pub(crate) fn error_at(
    path: &Path,
    text: &str,
    span: Range<usize>,
    message: String,
) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        message,
    }
}

/// A TOML or serde error on one line, naming the key written on that line if the message does not.
pub(crate) fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim().replace('\n', " ");
    let message = match key_at(text, span.start) {
        Some(key) if !msg.contains(&format!("`{key}`")) => format!("key `{key}`: {msg}"),
        _ => msg,
    };
    error_at(path, text, span, message)
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written on the line holding `offset` (the text before `=`), if any.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[start..end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<File, String> {
        File::parse(Path::new("f.toml"), text.into(), &["port", "workers"])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_keys_name_the_first_one_and_its_line() {
        let e = parse("port = 1\nzzz = 2\naaa = 3\n").unwrap_err();
        assert!(e.starts_with("f.toml:2: unknown field `zzz`"), "{e}");
        assert!(e.contains("expected one of `port`, `workers`"), "{e}");
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_one() {
        let e = parse("wrokers = 4\n").unwrap_err();
        assert_eq!(
            e,
            "f.toml:1: unknown field `wrokers`; did you mean `workers`?"
        );
        assert_eq!(
            nearest("UVICORN_LOG_LEVL", &["UVICORN_LOG_LEVEL", "UVICORN_PORT"]),
            Some("UVICORN_LOG_LEVEL")
        );
        assert_eq!(nearest("xyz", &["workers"]), None);
    }

    #[test]
    fn syntax_errors_name_the_line_and_key() {
        let e = parse("port = 1\nport = 2\n").unwrap_err();
        assert!(e.starts_with("f.toml:2: key `port`"), "{e}");
        let f = parse("workers = 3\n").unwrap();
        assert!(f.value("workers").is_some() && f.value("port").is_none());
    }
}
