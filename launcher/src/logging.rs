//! A small `log` backend: `vmpod: LEVEL: message` on stderr, so that guest
//! output on stdout stays clean for `kubectl logs`. The level comes from
//! `VMPOD_LOG` (error, warn, info, debug, trace; default info). Any thread
//! logs; each line is one write.
#![forbid(unsafe_code)]

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

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
