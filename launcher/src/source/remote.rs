//! The cluster, through the `vmpod-cluster` helper process: it finds the
//! definition (the API, a ConfigMap, a URL, instancetypes), prints the
//! resolved VM as one JSON line, and then, when the VM's status is to be
//! reported, stays to report it: vmpod writes what the VM does to its
//! stdin, it writes back what the VMM should do.
//!
//! Keeping the Kubernetes client (HTTP, TLS, JSON from the network) in its
//! own process keeps it out of the VMM's address space and keeps the VMM
//! as small as it is without it.
//!
//! Main thread (resolve); the link's threads while the VM runs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Resolved;
use crate::api::{self, Command, Event, SharedStatus, Status};
use crate::spec::{Ignored, Valid, VmConfig};

/// The helper's name, looked for beside vmpod's own executable, then on PATH.
pub const HELPER: &str = "vmpod-cluster";

/// The helper's first line: the VM to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub config: VmConfig,
    pub ignored: Vec<(String, String)>,
    pub origin: String,
    /// The helper stays to report the VM's status.
    pub reporting: bool,
}

impl Answer {
    pub fn new(resolved: &Resolved, reporting: bool) -> Self {
        Answer {
            config: resolved.valid.config.clone(),
            ignored: resolved
                .valid
                .ignored
                .iter()
                .map(|i| (i.path.clone(), i.reason.clone()))
                .collect(),
            origin: resolved.origin.clone(),
            reporting,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot start {} (it talks to the Kubernetes API for vmpod; it belongs beside vmpod)", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The helper said why on stderr (shared with vmpod's) and exited.
    #[error("{HELPER} failed")]
    Failed { code: u8 },
    #[error("{HELPER} answered something vmpod cannot read: {0}")]
    BadAnswer(String),
}

fn helper_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(HELPER)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(HELPER))
}

/// Runs `vmpod-cluster resolve ARGS…`; returns the VM and, when its
/// status is reported, the link to the helper that reports it.
pub fn resolve(args: &[OsString]) -> Result<(Resolved, Option<StatusLink>), RemoteError> {
    let path = helper_path();
    let mut child = Process::new(&path)
        .arg("resolve")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| RemoteError::Spawn {
            path: path.clone(),
            source,
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut from_helper = BufReader::new(stdout);
    let mut line = String::new();
    let read = (&mut from_helper)
        .take(crate::spec::MAX_DEFINITION_BYTES * 4)
        .read_line(&mut line);
    if read.is_err() || line.is_empty() {
        drop(child.stdin.take());
        let status = child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
        return Err(RemoteError::Failed {
            code: u8::try_from(status).unwrap_or(1).max(1),
        });
    }
    let answer = serde_json::from_str::<Answer>(&line)
        .map_err(|e| e.to_string())
        .and_then(|answer| match answer.config.validate() {
            Ok(()) => Ok(answer),
            Err(problems) => Err(format!("a VM configuration with problems: {problems:?}")),
        });
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RemoteError::BadAnswer(why));
        }
    };
    let resolved = Resolved {
        valid: Valid {
            config: answer.config,
            ignored: answer
                .ignored
                .into_iter()
                .map(|(path, reason)| Ignored { path, reason })
                .collect(),
        },
        origin: answer.origin,
    };
    if !answer.reporting {
        drop(child.stdin.take());
        let _ = child.wait();
        return Ok((resolved, None));
    }
    let to_helper = child.stdin.take().expect("piped");
    Ok((
        resolved,
        Some(StatusLink {
            child,
            to_helper: Arc::new(Mutex::new(Some(to_helper))),
            from_helper: Some(from_helper),
            ended: Arc::new(AtomicBool::new(false)),
            poller: None,
        }),
    ))
}

/// The running helper that reports the VM's status.
pub struct StatusLink {
    child: Child,
    to_helper: Arc<Mutex<Option<ChildStdin>>>,
    from_helper: Option<BufReader<ChildStdout>>,
    ended: Arc<AtomicBool>,
    /// Tells the helper when the first boot runs.
    poller: Option<std::thread::JoinHandle<()>>,
}

fn tell(to_helper: &Mutex<Option<ChildStdin>>, line: &str) {
    let mut guard = to_helper.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(stdin) = guard.as_mut() {
        if stdin.write_all(format!("{line}\n").as_bytes()).is_err() {
            // The helper is gone; the VM goes on without it.
            *guard = None;
        }
    }
}

impl StatusLink {
    /// What the control loop calls for each of the VM's events.
    pub fn observer(&self) -> api::Observer {
        let to_helper = self.to_helper.clone();
        Box::new(move |event| {
            let line = match event {
                Event::Resume => "running",
                Event::Stop => "paused",
                Event::Powerdown => "stopping",
                _ => return,
            };
            tell(&to_helper, line);
        })
    }

    /// Relays what the helper asks to the VMM, and tells the helper when
    /// the first boot is running (that start is no event).
    pub fn start(&mut self, commands: api::Sender<Command>, status: SharedStatus) {
        if let Some(from_helper) = self.from_helper.take() {
            let spawned = std::thread::Builder::new()
                .name("vmpod-cluster-asks".into())
                .spawn(move || {
                    for line in from_helper.lines().map_while(Result::ok) {
                        match line.trim() {
                            "powerdown" => commands.send(Command::Powerdown),
                            "quit" => commands.send(Command::Quit),
                            other => {
                                log::warn!(
                                    "{HELPER} asked for {other:?}, which vmpod does not know"
                                );
                                true
                            }
                        };
                    }
                });
            if let Err(error) = spawned {
                log::warn!("cannot follow {HELPER}'s requests: {error}");
            }
        }
        let to_helper = self.to_helper.clone();
        let ended = self.ended.clone();
        let spawned = std::thread::Builder::new()
            .name("vmpod-cluster-start".into())
            .spawn(move || loop {
                // Past Starting: a guest that powered off at once ran too.
                if status.get() != Status::Starting {
                    tell(&to_helper, "running");
                    return;
                }
                if ended.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            });
        match spawned {
            Ok(poller) => self.poller = Some(poller),
            Err(error) => log::warn!("cannot tell {HELPER} when the VM runs: {error}"),
        }
    }

    /// Tells the helper the VM has ended and waits (up to 10 s) for it to
    /// report so.
    pub fn finish(self, how: &str) {
        self.end(&format!("ended {how}"));
    }

    /// Tells the helper the VM could not run, and why (a `SyncFailed`
    /// Event, as KubeVirt records), then as [`finish`](Self::finish).
    pub fn fail(self, why: &str) {
        self.end(&format!("failed {}", why.replace('\n', " ")));
    }

    fn end(mut self, line: &str) {
        self.ended.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        tell(&self.to_helper, line);
        drop(
            self.to_helper
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        log::warn!("{HELPER} did not report the VM's end within 10 s; stopping it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
