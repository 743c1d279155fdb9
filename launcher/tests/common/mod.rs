//! Helpers for tests that run the real `vmpod` binary: definitions for the
//! tiny guests, a watchdog on every run, and expect-style waiting on output.
#![allow(dead_code)] // each test file uses a different part

pub mod disk_images;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");

/// Where build.rs put the tiny guests.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("VMPOD_GUESTS_DIR")).join(name)
}

/// Says why a test cannot check what it is about on this machine. Under
/// CI (`CI=true`), which runs as root with everything installed, that is a
/// failure instead. Tests that need /dev/kvm do not use this: build.rs
/// marks them ignored where it is missing, so the runner reports them so.
pub fn not_here(test: &str, reason: &str) {
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: {reason}, and CI must run it"
    );
    eprintln!("{test}: skipped: {reason}");
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

/// One of vmpod's output streams, collected as it comes; waiters are
/// woken on every chunk and when the stream ends.
#[derive(Default)]
pub struct Output {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("lock").0).into_owned()
    }

    /// Waits until `done(bytes, ended)` holds; false if `deadline` came first.
    pub fn wait_until(&self, deadline: Instant, mut done: impl FnMut(&[u8], bool) -> bool) -> bool {
        let mut state = self.state.lock().expect("lock");
        loop {
            if done(&state.0, state.1) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self.changed.wait_timeout(state, left).expect("lock").0;
        }
    }
}

fn collect(mut source: impl Read + Send + 'static) -> (Arc<Output>, JoinHandle<()>) {
    let output = Arc::new(Output::default());
    let sink = output.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.state
                .lock()
                .expect("lock")
                .0
                .extend_from_slice(&chunk[..read]);
            sink.changed.notify_all();
        }
        sink.state.lock().expect("lock").1 = true;
        sink.changed.notify_all();
    });
    (output, reader)
}

/// A running `vmpod launch`, with its output collected as it comes.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
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

/// `vmpod launch` of `definition` with its run and scratch directories
/// in `scratch`; callers add options and start it with `launch_with`.
pub fn launch_command(scratch: &Scratch, definition: &Path) -> Command {
    let mut command = Command::new(VMPOD);
    command
        .args(["launch", "--file"])
        .arg(definition)
        .arg("--run-dir")
        .arg(scratch.0.join("run"))
        .arg("--scratch-dir")
        .arg(scratch.0.join("scratch"));
    command
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
    let (stdout, stdout_reader) = collect(child.stdout.take().expect("stdout"));
    let (stderr, stderr_reader) = collect(child.stderr.take().expect("stderr"));
    Running {
        stdin: child.stdin.take(),
        child,
        stdout,
        readers: vec![stdout_reader, stderr_reader],
        stderr,
    }
}

impl Running {
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to vmpod, as the kubelet does on pod deletion.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits until `stream` shows `text` `count` times; the watchdog kills
    /// the VM and fails the test after `timeout`, or when output ends first.
    fn wait_for(&mut self, stream: &Output, text: &str, count: usize, timeout: Duration) {
        let needle = text.as_bytes();
        let seen = stream.wait_until(Instant::now() + timeout, |bytes, ended| {
            let found = bytes.windows(needle.len()).filter(|w| *w == needle).count();
            found >= count || ended
        });
        if !seen || stream.text().matches(text).count() < count {
            let _ = self.child.kill();
            panic!(
                "watchdog: {text:?} not seen {count} times\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Waits until stdout shows `text` `count` times.
    pub fn expect_count(&mut self, text: &str, count: usize, timeout: Duration) {
        let stdout = self.stdout.clone();
        self.wait_for(&stdout, text, count, timeout);
    }

    pub fn expect(&mut self, text: &str, timeout: Duration) {
        self.expect_count(text, 1, timeout);
    }

    /// Waits until vmpod's log (stderr) shows `text`.
    pub fn expect_log(&mut self, text: &str, timeout: Duration) {
        let stderr = self.stderr.clone();
        self.wait_for(&stderr, text, 1, timeout);
    }

    /// Types into the guest's serial console.
    pub fn type_text(&mut self, text: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text).expect("type");
        stdin.flush().expect("flush");
    }

    /// Waits for vmpod to exit (its stdout ends with it); the watchdog
    /// kills it after `timeout`. All output has been read when this returns.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        drop(self.stdin.take());
        let exited = self
            .stdout
            .wait_until(Instant::now() + timeout, |_, ended| ended);
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for vmpod");
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        Finished {
            code: if exited { status.code() } else { None },
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

/// Reads monitor output up to and including the next `(vmpod) ` prompt.
pub fn until_prompt(monitor: &mut impl Read) -> String {
    let mut text = Vec::new();
    while !text.ends_with(b"(vmpod) ") {
        let mut byte = [0u8];
        monitor.read_exact(&mut byte).expect("monitor output");
        text.push(byte[0]);
    }
    String::from_utf8_lossy(&text).into_owned()
}
