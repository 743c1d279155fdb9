//! Helpers for tests that run the real `vmpod` binary: definitions for the
//! tiny guests, a watchdog on every run, and expect-style waiting on output.
#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");

/// Where build.rs put the tiny guests.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("VMPOD_GUESTS_DIR")).join(name)
}

/// KVM tests need /dev/kvm; without it they say so and pass as skipped.
pub fn kvm_available(test: &str) -> bool {
    let available = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !available {
        eprintln!("{test}: skipped: /dev/kvm is missing or not usable here");
    }
    available
}

/// True (after saying so) when a run failed only because /dev/kvm is not
/// usable here, so the test cannot check what it is about.
pub fn skipped_for_kvm(test: &str, run: &Finished) -> bool {
    let skipped = run.stderr.contains("/dev/kvm");
    if skipped {
        eprintln!("{test}: skipped: /dev/kvm is not usable here");
    }
    skipped
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmpod-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// Writes a VirtualMachineInstance for `kernel` and returns its path.
    pub fn definition(
        &self,
        name: &str,
        kernel: &Path,
        cores: u32,
        memory: &str,
        kernel_args: &str,
    ) -> PathBuf {
        self.definition_with(name, kernel, cores, memory, kernel_args, "")
    }

    /// Like `definition`, with `extra` added to the instance spec
    /// (indented two spaces, such as `  terminationGracePeriodSeconds: 3\n`).
    pub fn definition_with(
        &self,
        name: &str,
        kernel: &Path,
        cores: u32,
        memory: &str,
        kernel_args: &str,
        extra: &str,
    ) -> PathBuf {
        let text = format!(
            "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  domain:
    cpu: {{cores: {cores}}}
    memory: {{guest: {memory}}}
    firmware:
      kernelBoot:
        kernelArgs: {kernel_args:?}
        container: {{kernelPath: {kernel}}}
    devices: {{autoattachPodInterface: false, autoattachGraphicsDevice: false}}
{extra}",
            kernel = kernel.display()
        );
        let path = self.0.join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write definition");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn collect(mut source: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&chunk[..read]);
        }
    });
    buffer
}

/// A running `vmpod launch`, with its output collected as it comes.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// What a finished run showed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a helper role (`serial`, `qmp`, …) against `run_dir` with `input`
/// on its stdin; returns once it has ended.
pub fn run_helper(role: &str, run_dir: &Path, input: &[u8]) -> std::process::Output {
    let mut helper = Command::new(VMPOD)
        .arg(role)
        .arg("--run-dir")
        .arg(run_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("helper starts");
    helper
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to the helper");
    helper
        .wait_with_output()
        .expect("helper ends after its input")
}

/// `vmpod launch`, with its sockets in a `run` directory beside the definition.
pub fn launch(definition: &Path) -> Running {
    launch_with(
        Command::new(VMPOD)
            .args(["launch", "--file"])
            .arg(definition)
            .arg("--run-dir")
            .arg(run_dir_for(definition)),
    )
}

/// The run directory `launch` gives the VM of `definition`.
pub fn run_dir_for(definition: &Path) -> PathBuf {
    definition.parent().unwrap_or(Path::new(".")).join("run")
}

pub fn launch_with(command: &mut Command) -> Running {
    let mut child = command
        .env("VMPOD_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmpod starts");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    Running {
        stdin: child.stdin.take(),
        child,
        stdout,
        stderr,
    }
}

impl Running {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to vmpod, as the kubelet does on pod deletion.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits until stdout shows `text` `count` times; panics (after killing
    /// the VM) when the watchdog runs out.
    pub fn expect_count(&mut self, text: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stdout().matches(text).count() < count {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                let stderr =
                    String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned();
                panic!(
                    "watchdog: {text:?} not seen {count} times\nstdout:\n{}\nstderr:\n{stderr}",
                    self.stdout()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn expect(&mut self, text: &str, timeout: Duration) {
        self.expect_count(text, 1, timeout);
    }

    /// Types into the guest's serial console.
    pub fn type_text(&mut self, text: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text).expect("type");
        stdin.flush().expect("flush");
    }

    /// Waits for vmpod to exit; the watchdog kills it after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(50)); // let the readers drain
        let stderr = String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned();
        Finished {
            code,
            stdout: self.stdout(),
            stderr,
        }
    }
}
