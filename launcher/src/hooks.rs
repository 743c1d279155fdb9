//! `launch.d` hooks: the executables in a directory (`/etc/vmpod/launch.d`
//! by default), run in name order before the VM boots, as run-parts runs
//! them (names of letters, digits, `_` and `-`; others are skipped). Each
//! gets the rendered `VmConfig` (YAML, in the run directory) and the VM's
//! identity in its environment; its output goes to vmpod's log. A hook
//! that fails stops the launch with its output; a hook that edits the
//! configuration file changes the VM, once the result validates.
//!
//! May import `spec` only. Main thread, before any other thread starts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::VmConfig;

pub const DEFAULT_HOOK_DIR: &str = "/etc/vmpod/launch.d";
/// The configuration file hooks read (and may edit), in the run directory.
pub const CONFIG_FILE: &str = "vm.yaml";
/// A configuration file the hooks leave larger than this is refused.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How much of a failing hook's output the error quotes (its last lines).
const QUOTED_OUTPUT: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot list the launch.d directory {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the VM configuration for the launch.d hooks to {}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the launch.d hook {}", path.display())]
    Start {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the launch.d hook {} failed ({status}), so the VM was not started; its output:\n{output}", path.display())]
    Failed {
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("the launch.d hooks left a configuration vmpod cannot use in {}: {problem}", path.display())]
    BadConfig { path: PathBuf, problem: String },
}

/// Where the hooks are and where their configuration file goes.
pub struct Hooks<'a> {
    pub dir: &'a Path,
    pub run_dir: &'a Path,
    pub scratch_dir: &'a Path,
}

/// Runs the hooks in order; returns the configuration they changed, if
/// they changed it.
pub fn run(hooks: &Hooks, config: &VmConfig) -> Result<Option<VmConfig>, HookError> {
    let found = executables(hooks.dir)?;
    if found.is_empty() {
        return Ok(None);
    }
    let config_path = hooks.run_dir.join(CONFIG_FILE);
    let rendered = serde_norway::to_string(config).map_err(|error| HookError::WriteConfig {
        path: config_path.clone(),
        source: std::io::Error::other(error),
    })?;
    write_private(&config_path, rendered.as_bytes()).map_err(|source| HookError::WriteConfig {
        path: config_path.clone(),
        source,
    })?;
    for hook in &found {
        run_one(hook, hooks, &config_path, config)?;
    }
    read_back(&config_path, &rendered)
}

/// The hooks in `dir`, in name order; `dir` missing means none.
fn executables(dir: &Path) -> Result<Vec<PathBuf>, HookError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            log::debug!("no launch.d hooks: {} does not exist", dir.display());
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(HookError::ReadDir {
                dir: dir.to_owned(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| HookError::ReadDir {
                dir: dir.to_owned(),
                source,
            })?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let runnable_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let metadata = std::fs::metadata(&path);
        let is_file = metadata.as_ref().is_ok_and(|m| m.is_file());
        if !runnable_name || !is_file {
            log::debug!(
                "launch.d: skipped {} (not a hook name or not a file)",
                path.display()
            );
        } else if metadata.is_ok_and(|m| m.permissions().mode() & 0o111 == 0) {
            log::info!("launch.d: skipped {} (not executable)", path.display());
        } else {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn run_one(
    hook: &Path,
    hooks: &Hooks,
    config_path: &Path,
    config: &VmConfig,
) -> Result<(), HookError> {
    let name = hook.file_name().map_or_else(
        || hook.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let start_error = |source| HookError::Start {
        path: hook.to_owned(),
        source,
    };
    // One pipe for stdout and stderr, so the log keeps their order.
    let (reader, writer) = std::io::pipe().map_err(start_error)?;
    let identity = &config.identity;
    let mut child = Command::new(hook)
        .env("VMPOD_CONFIG", config_path)
        .env("VMPOD_VM_NAME", &identity.name)
        .env("VMPOD_VM_NAMESPACE", &identity.namespace)
        .env("VMPOD_VM_UUID", identity.uuid.to_string())
        .env("VMPOD_VM_HOSTNAME", &identity.hostname)
        .env("VMPOD_RUN_DIR", hooks.run_dir)
        .env("VMPOD_SCRATCH_DIR", hooks.scratch_dir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(start_error)?)
        .stderr(writer)
        .spawn()
        .map_err(start_error)?;
    log::info!("launch.d: running {name}");
    let mut tail = String::new();
    for line in BufReader::new(reader).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        log::info!("launch.d/{name}: {line}");
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > 2 * QUOTED_OUTPUT {
            tail = last_bytes(&tail, QUOTED_OUTPUT).to_owned();
        }
    }
    let status = child.wait().map_err(start_error)?;
    if status.success() {
        return Ok(());
    }
    let output = match last_bytes(&tail, QUOTED_OUTPUT) {
        "" => "(none)".to_owned(),
        last if last.len() < tail.len() => format!("…{last}"),
        last => last.to_owned(),
    };
    Err(HookError::Failed {
        path: hook.to_owned(),
        status,
        output,
    })
}

/// The last `bytes` bytes of `text` or a little less, on a character
/// boundary.
fn last_bytes(text: &str, bytes: usize) -> &str {
    let start = text.len().saturating_sub(bytes);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

/// The configuration the hooks left, if they changed it.
fn read_back(path: &Path, rendered: &str) -> Result<Option<VmConfig>, HookError> {
    let bad = |problem: String| HookError::BadConfig {
        path: path.to_owned(),
        problem,
    };
    let size = std::fs::metadata(path)
        .map_err(|error| bad(error.to_string()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "it is {size} bytes; a VM configuration is a few KiB"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|error| bad(error.to_string()))?;
    if text == rendered {
        return Ok(None);
    }
    let changed: VmConfig =
        serde_norway::from_str(&text).map_err(|error| bad(error.to_string()))?;
    changed.validate().map_err(|problems| {
        bad(problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    })?;
    log::info!(
        "launch.d: the hooks changed the VM's configuration ({})",
        path.display()
    );
    Ok(Some(changed))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
