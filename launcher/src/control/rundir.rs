//! The run directory (default `/vm/run`): created 0700, one Unix socket
//! per service, created 0600, and a socket left by an earlier vmpod
//! replaced only when nothing answers on it (a live vmpod keeps its socket).
//!
//! Used by `launch` on the main thread before the control thread starts.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub use crate::api::{
    DEFAULT_RUN_DIR, MONITOR_SOCKET, QMP_SOCKET, READY_SOCKET, SERIAL_SOCKET, VNC_SOCKET,
};

/// The helpers `launch` links beside the run directory.
pub const HELPER_ROLES: [&str; 5] = ["serial", "monitor", "qmp", "vnc", "ready"];

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot create the run directory {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is in use by another vmpod (it answers); give this one another --run-dir", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; vmpod will not remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where vmpod's sockets live.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates the directory, 0700 whatever the umask, with any missing
    /// parents; a directory that exists (a mounted emptyDir) is kept as it is.
    pub fn create(path: &Path) -> Result<Self, RunDirError> {
        let create_error = |source| RunDirError::Create {
            path: path.to_owned(),
            source,
        };
        if !path.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(create_error)?;
            // The umask may have taken bits the mode asked for; it never adds any.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(create_error)?;
        }
        Ok(RunDir {
            path: path.to_owned(),
        })
    }

    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Listens on `name`, replacing a stale socket, with mode 0600.
    pub fn listen(&self, name: &str) -> Result<UnixListener, RunDirError> {
        let path = self.socket_path(name);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if !metadata.file_type().is_socket() => {
                return Err(RunDirError::NotASocket { path })
            }
            Ok(_) => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(RunDirError::InUse { path });
                }
                log::info!("replacing the stale socket {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(RunDirError::Listen { path, source }),
        }
        let listen_error = |source| RunDirError::Listen {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(listen_error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        Ok(listener)
    }

    /// Links the `/vm/*` helpers (serial, monitor, qmp, ready) to this
    /// binary beside the run directory (`/vm/run` → `/vm/serial`, …), where
    /// nothing is in the way and the directory allows it; the image may
    /// have made them already.
    pub fn link_helpers(&self) {
        let (Some(links), Ok(binary)) = (self.path.parent(), std::env::current_exe()) else {
            return;
        };
        for role in HELPER_ROLES {
            let link = links.join(role);
            if std::fs::symlink_metadata(&link).is_err() {
                if let Err(error) = std::os::unix::fs::symlink(&binary, &link) {
                    log::debug!("no helper link {}: {error}", link.display());
                }
            }
        }
    }

    /// Removes the sockets vmpod made (on a clean exit).
    pub fn remove_socket(&self, name: &str) {
        let _ = std::fs::remove_file(self.socket_path(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-rundir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sockets_are_private_and_stale_ones_are_replaced() {
        let dir = scratch("stale");
        let run_dir = RunDir::create(&dir).expect("create");
        let first = run_dir.listen(SERIAL_SOCKET).expect("listen");
        let mode = std::fs::metadata(run_dir.socket_path(SERIAL_SOCKET))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            matches!(
                run_dir.listen(SERIAL_SOCKET),
                Err(RunDirError::InUse { .. })
            ),
            "a live socket is kept"
        );
        drop(first); // the socket file stays behind, like after a crash
        assert!(
            run_dir.listen(SERIAL_SOCKET).is_ok(),
            "a stale socket is replaced"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_new_run_directory_is_private_whatever_the_umask() {
        let dir = scratch("mode").join("nested");
        // SAFETY: umask only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o002) };
        let created = RunDir::create(&dir);
        // SAFETY: restores the mask read above.
        unsafe { libc::umask(old) };
        created.expect("create");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(dir.parent().expect("parent")).ok();
    }

    #[test]
    fn other_files_are_never_removed() {
        let dir = scratch("file");
        let run_dir = RunDir::create(&dir).expect("create");
        std::fs::write(run_dir.socket_path(SERIAL_SOCKET), "precious").expect("write");
        assert!(matches!(
            run_dir.listen(SERIAL_SOCKET),
            Err(RunDirError::NotASocket { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(run_dir.socket_path(SERIAL_SOCKET)).expect("read"),
            "precious"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
