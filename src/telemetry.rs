//! Logging: a tracing subscriber filtered by `LOG_LEVEL`, as text or (with
//! `LOG_FORMAT=json`) one JSON object per line, writing to stdout,
//! to `LOG_FILE` when set, and to an in-memory ring of the newest lines that
//! `GET /api/monitor/logs` reads.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};

/// Lines kept in memory.
const RING_LINES: usize = 1000;

// A std Mutex: held only to push or copy lines, never across an await.
static RING: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();

fn ring() -> &'static Mutex<VecDeque<String>> {
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(RING_LINES)))
}

/// The newest `n` log lines, oldest first.
pub fn recent_lines(n: usize) -> Vec<String> {
    let ring = ring().lock().expect("log ring lock");
    ring.iter()
        .skip(ring.len().saturating_sub(n))
        .cloned()
        .collect()
}

struct RingWriter;

impl io::Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = strip_ansi(&String::from_utf8_lossy(buf));
        let mut ring = ring().lock().expect("log ring lock");
        for line in text.lines().filter(|l| !l.is_empty()) {
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(line.to_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Ring;

impl<'a> MakeWriter<'a> for Ring {
    type Writer = RingWriter;

    fn make_writer(&'a self) -> RingWriter {
        RingWriter
    }
}

/// Removes terminal colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Installs the global subscriber; a bad filter or file is a configuration error.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|e| {
        ConfigError::new(
            "LOG_LEVEL",
            format!("'{}' is not a log filter: {e}", config.log_level),
        )
    })?;
    let file = match &config.log_file {
        None => None,
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    ConfigError::new("LOG_FILE", format!("cannot open {}: {e}", path.display()))
                })?,
        ),
    };
    let ansi = file.is_none() && !config.log_json;
    let writer = io::stdout.and(Ring).and(OptionalFile(file.map(Mutex::new)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if config.log_json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    Ok(())
}

/// The log file, when there is one.
struct OptionalFile(Option<Mutex<std::fs::File>>);

impl<'a> MakeWriter<'a> for OptionalFile {
    type Writer = Box<dyn io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match &self.0 {
            Some(file) => Box::new(file.make_writer()),
            None => Box::new(io::sink()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn keeps_the_newest_lines_without_colours() {
        for i in 0..RING_LINES + 5 {
            RingWriter
                .write_all(format!("\u{1b}[32mline {i}\u{1b}[0m\n").as_bytes())
                .unwrap();
        }
        let lines = recent_lines(3);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], format!("line {}", RING_LINES + 4));
        assert_eq!(recent_lines(5000).len(), RING_LINES);
    }
}
