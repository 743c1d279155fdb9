//! The serial console as users reach it: through the socket in the run
//! directory and the `vmpod serial` helper, with the echo guest on KVM.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest, kvm_available, launch_with, run_dir_for, run_helper, Running, Scratch, VMPOD};

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
fn clients_get_the_scrollback_and_share_the_console() {
    if !kvm_available("clients_get_the_scrollback_and_share_the_console") {
        return;
    }
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
fn a_client_that_stops_reading_is_detached_and_nothing_stalls() {
    if !kvm_available("a_client_that_stops_reading_is_detached_and_nothing_stalls") {
        return;
    }
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
fn the_helper_is_a_plain_pipe_without_a_terminal() {
    if !kvm_available("the_helper_is_a_plain_pipe_without_a_terminal") {
        return;
    }
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
fn input_from_a_client_that_closes_at_once_is_not_lost() {
    if !kvm_available("input_from_a_client_that_closes_at_once_is_not_lost") {
        return;
    }
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
