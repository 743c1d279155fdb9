//! The serial console as users reach it: through the socket in the run
//! directory and the `vmpod serial` helper, with the echo guest on KVM.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest, launch_with, run_dir_for, run_helper, Running, Scratch, VMPOD};

const WATCHDOG: Duration = Duration::from_secs(60);

fn start_echo(scratch: &Scratch, client_backlog: usize) -> (Running, std::path::PathBuf) {
    let definition = scratch.definition("echo", &guest("echo.elf"), 1, "16Mi", "console=ttyS0");
    let run_dir = run_dir_for(&definition);
    let mut vm = launch_with(
        Command::new(VMPOD)
            .args(["launch", "--file"])
            .arg(&definition)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--serial-client-backlog", &client_backlog.to_string()]),
    );
    vm.expect("type and it echoes", WATCHDOG);
    (vm, run_dir)
}

fn connect(run_dir: &Path) -> UnixStream {
    let stream = UnixStream::connect(run_dir.join("serial.sock")).expect("serial socket accepts");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    stream
}

/// Reads from `stream` until `text` has arrived; returns all that was read.
fn read_until(stream: &mut UnixStream, text: &str) -> String {
    let deadline = Instant::now() + WATCHDOG;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).contains(text) {
        assert!(
            Instant::now() < deadline,
            "watchdog: {text:?} not seen; got {:?}",
            String::from_utf8_lossy(&seen)
        );
        match stream.read(&mut chunk) {
            Ok(0) => panic!("console closed before {text:?}"),
            Ok(read) => seen.extend_from_slice(&chunk[..read]),
            Err(_) => {} // timeout: try again
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn power_off(vm: Running, client: &mut UnixStream) {
    client.write_all(b"\x04").expect("type Ctrl-D");
    let run = vm.finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn clients_get_the_scrollback_and_share_the_console() {
    let scratch = Scratch::new("serial-share");
    let (mut vm, run_dir) = start_echo(&scratch, 1 << 20);
    let mut first = connect(&run_dir);
    let replay = read_until(&mut first, "type and it echoes");
    assert!(
        replay.starts_with("vmpod echo guest"),
        "scrollback replays the boot output: {replay:?}"
    );
    let mut second = connect(&run_dir);
    read_until(&mut second, "type and it echoes");
    first.write_all(b"typed by the first\n").expect("type");
    read_until(&mut first, "typed by the first\n");
    read_until(&mut second, "typed by the first\n");
    second.write_all(b"typed by the second\n").expect("type");
    read_until(&mut first, "typed by the second\n");
    read_until(&mut second, "typed by the second\n");
    vm.expect("typed by the second\n", WATCHDOG); // and on stdout, for kubectl logs
    power_off(vm, &mut first);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_client_that_stops_reading_is_detached_and_nothing_stalls() {
    let scratch = Scratch::new("serial-laggard");
    let (vm, run_dir) = start_echo(&scratch, 4096);
    let mut reader = connect(&run_dir);
    read_until(&mut reader, "type and it echoes");
    let stuck = connect(&run_dir); // never reads
                                   // Far more output than the stuck client's socket and backlog can hold.
    let line = format!("{}\n", "x".repeat(99));
    let mut writer = reader.try_clone().expect("clone");
    let lines = 1000;
    let typing = std::thread::spawn(move || {
        for _ in 0..lines {
            writer.write_all(line.as_bytes()).expect("type");
        }
        writer.write_all(b"end of flood\n").expect("type");
    });
    let echoed = read_until(&mut reader, "end of flood\n");
    typing.join().expect("typing thread");
    assert_eq!(
        echoed.matches(&"x".repeat(99)).count(),
        lines,
        "the reading client got every line"
    );
    let run = {
        reader.write_all(b"\x04").expect("Ctrl-D");
        vm.finish(WATCHDOG)
    };
    drop(stuck);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("fell behind and was detached"),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn the_helper_is_a_plain_pipe_without_a_terminal() {
    let scratch = Scratch::new("serial-helper");
    let (vm, run_dir) = start_echo(&scratch, 1 << 20);
    let output = run_helper("serial", &run_dir, b"sent through the helper\n");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        shown.starts_with("vmpod echo guest"),
        "scrollback first: {shown:?}"
    );
    assert!(shown.contains("sent through the helper\n"), "{shown:?}");
    let mut client = connect(&run_dir);
    power_off(vm, &mut client);
}

#[test]
fn the_helper_says_when_no_vm_is_there() {
    let output = Command::new(VMPOD)
        .args(["serial", "--run-dir", "/nonexistent/run"])
        .stdin(Stdio::null())
        .output()
        .expect("helper runs");
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("cannot reach /nonexistent/run/serial.sock: is vmpod running"),
        "{error}"
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn input_from_a_client_that_closes_at_once_is_not_lost() {
    let scratch = Scratch::new("serial-send-and-close");
    let (vm, run_dir) = start_echo(&scratch, 1 << 20);
    // Like `printf '\x04' | socat - UNIX:serial.sock`: write, then hang up.
    let mut client = UnixStream::connect(run_dir.join("serial.sock")).expect("connect");
    client.write_all(b"\x04").expect("type Ctrl-D");
    drop(client);
    let run = vm.finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.ends_with("echo guest: powering off\n"),
        "{}",
        run.stdout
    );
}

/// QMP `query-status` over the socket, as a client library would ask it.
fn query_status(run_dir: &Path) -> String {
    let stream = UnixStream::connect(run_dir.join("qmp.sock")).expect("QMP socket");
    stream.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stream));
    let mut next = || lines.next().expect("a reply").expect("readable");
    next(); // greeting
    writer
        .write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status"}"#)
        .expect("send");
    next();
    next()
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_stdout_nobody_reads_stalls_neither_the_guest_nor_the_console() {
    let scratch = Scratch::new("stdout-unread");
    let definition = scratch.definition("flood", &guest("flood.elf"), 1, "16Mi", "");
    let run_dir = run_dir_for(&definition);
    // stdout is a two-page pipe nobody reads, as under a stuck log collector.
    let mut vm = std::process::Command::new(VMPOD)
        .args(["launch", "--file"])
        .arg(&definition)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--stdout-buffer", "4096"])
        .env("VMPOD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmpod starts");
    let stdout = vm.stdout.take().expect("stdout");
    // SAFETY: F_SETPIPE_SZ only resizes the pipe behind this descriptor.
    let resized = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&stdout),
            libc::F_SETPIPE_SZ,
            8192,
        )
    };
    assert_eq!(resized, 8192);
    let stderr = vm.stderr.take().expect("stderr");
    let (lines, log_lines) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let _ = lines.send(line);
        }
        text
    });
    while !log_lines
        .recv_timeout(WATCHDOG)
        .expect("vmpod logs that it serves its sockets")
        .contains("serving the console")
    {}
    let mut client = connect(&run_dir);
    let mut console = read_until(&mut client, "flood guest ready\n");
    client.write_all(b"s").expect("type"); // the 64 KiB flood
    let during = query_status(&run_dir);
    console += &read_until(&mut client, "flood done");
    assert!(console.len() > 64 * 1024, "{} bytes", console.len());
    assert!(
        during.contains(r#""status":"running""#),
        "QMP answered {during}"
    );
    let status = vm.wait().expect("vmpod exits");
    let log = log.join().expect("log reader");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("bytes of guest console output were not written to it"),
        "{log}"
    );
    let mut written = String::new();
    std::io::BufReader::new(stdout)
        .read_to_string(&mut written)
        .expect("read stdout");
    // stdout got what it could take, in order, and then missed the rest.
    assert!(written.starts_with("flood guest ready\n"), "{written:?}");
    assert!(
        console.starts_with(&written),
        "stdout is the console's beginning"
    );
    assert!(
        written.len() < console.len(),
        "stdout missed output, the console did not"
    );
}
