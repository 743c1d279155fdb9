//! `/vm/ready`: exits 0 when vmpod says the VM is ready (running and, if
//! the definition names one, its serial pattern has appeared), 1 otherwise,
//! for use as an exec readinessProbe. The helper process's main thread.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::READY_SOCKET;

/// vmpod's one-line answer; `Err` with the reason when not ready.
pub fn check(run_dir: &Path) -> Result<String, String> {
    let path = run_dir.join(READY_SOCKET);
    let mut stream = UnixStream::connect(&path).map_err(|error| {
        format!(
            "not ready: vmpod is not serving at {} ({error})",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("not ready: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("not ready: no answer from vmpod ({e})"))?;
    let answer = answer.trim().to_owned();
    if answer == "ready" {
        Ok(answer)
    } else {
        Err(answer)
    }
}
