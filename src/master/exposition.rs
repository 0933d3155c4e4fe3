//! The Prometheus text exposition format (version 0.0.4), written by hand: a metric family is a
//! `# HELP` and a `# TYPE` line followed by its samples, `name{label="value",…} number`. The
//! values come from the master's own records at scrape time, so a registry-based client library
//! (which owns its metrics' storage) would only add a copy.

use std::fmt::Write;

/// The content type of the format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub(super) struct Page {
    out: String,
}

impl Page {
    /// Starts a family: its help and type lines.
    pub fn family(&mut self, name: &str, kind: Type, help: &str) {
        let kind = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str(r"\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str(r"\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = match value.into() {
            Value::Int(n) => writeln!(self.out, " {n}"),
            Value::Float(f) if f.is_nan() => writeln!(self.out, " NaN"),
            Value::Float(f) if f.is_infinite() => {
                writeln!(self.out, " {}Inf", if f > 0.0 { '+' } else { '-' })
            }
            Value::Float(f) => writeln!(self.out, " {f}"),
        };
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(n as u64)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut p = Page::default();
        p.family("x_total", Type::Counter, "Things.\nMore");
        p.sample("x_total", &[("worker", "0"), ("path", "a\"b\\c\nd")], 3u64);
        p.sample("x_total", &[], 0.25);
        p.sample("x_total", &[], f64::INFINITY);
        assert_eq!(
            p.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{worker=\"0\",path=\"a\\\"b\\\\c\\nd\"} 3\nx_total 0.25\nx_total +Inf\n"
        );
    }
}
