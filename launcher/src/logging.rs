//! A small `log` backend: `vmpod: LEVEL: message` on stderr, so that guest
//! output on stdout stays clean for `kubectl logs`. The level comes from
//! `VMPOD_LOG` (error, warn, info, debug, trace; default info). Any thread
//! logs; each line is one write.
#![forbid(unsafe_code)]

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

/// Prints an error for people, with every cause in its chain that adds
/// something (a message that already quotes its cause is not followed by it
/// again): the last word of a command that failed.
pub fn report(error: &dyn std::error::Error) {
    let mut shown = error.to_string();
    let mut text = format!("vmpod: error: {shown}\n");
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !shown.contains(&cause_text) {
            text.push_str(&format!("  caused by: {cause_text}\n"));
            shown.push_str(&cause_text);
        }
        source = cause.source();
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints a definition's problems: `CONTEXT: PROBLEM` when there is one,
/// else under a heading `CONTEXT: 2 problems`.
pub fn report_problems(context: &str, problems: &[impl std::fmt::Display]) {
    let mut text = match problems {
        // One problem is one line (a pod's log says what to fix in one).
        [only] => format!("{context}: {only}\n"),
        many => format!("{context}: {} problems\n", many.len()),
    };
    for problem in problems.iter().filter(|_| problems.len() > 1) {
        text.push_str(&format!("  {problem}\n"));
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            // A closed stderr must not bring the VM down.
            let _ = writeln!(
                std::io::stderr().lock(),
                "vmpod: {level}: {}",
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Parses a `VMPOD_LOG` value; unknown words fall back to `info`.
pub fn level_from(text: Option<&str>) -> LevelFilter {
    text.and_then(|t| t.trim().parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger once; later calls change nothing.
pub fn init() {
    let level = level_from(std::env::var("VMPOD_LOG").ok().as_deref());
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_and_fallback() {
        assert_eq!(level_from(Some("debug")), LevelFilter::Debug);
        assert_eq!(level_from(Some("WARN")), LevelFilter::Warn);
        assert_eq!(level_from(Some("loud")), LevelFilter::Info);
        assert_eq!(level_from(None), LevelFilter::Info);
    }
}
