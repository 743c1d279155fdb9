//! The other control sockets as users reach them: the human monitor, the
//! readiness probe (with and without a serial pattern), the QMP relay
//! helper, and the /vm/* links `launch` makes beside its run directory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{guest, launch, run_helper, until_prompt, Running, Scratch, VMPOD};

const WATCHDOG: Duration = Duration::from_secs(30);

fn echo_vm(scratch: &Scratch, annotations: &str) -> (Running, std::path::PathBuf) {
    let definition = scratch.0.join("echo.yaml");
    std::fs::write(
        &definition,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: echo\n{annotations}\
             spec:\n  domain:\n    memory: {{guest: 16Mi}}\n    firmware: {{kernelBoot: {{container: {{kernelPath: {}}}}}}}\n\
             \x20   devices: {{autoattachPodInterface: false, autoattachGraphicsDevice: false}}\n",
            guest("echo.elf").display()
        ),
    )
    .expect("write definition");
    let mut vm = launch(&definition);
    vm.expect("type and it echoes", WATCHDOG);
    (vm, scratch.0.join("run"))
}

fn power_off(vm: Running, run_dir: &Path) {
    let mut console = UnixStream::connect(run_dir.join("serial.sock")).expect("serial");
    console.write_all(b"\x04").expect("Ctrl-D");
    let run = vm.finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn the_monitor_answers_and_pauses_and_resumes() {
    let scratch = Scratch::new("monitor");
    let (vm, run_dir) = echo_vm(&scratch, "");
    let stream = UnixStream::connect(run_dir.join("monitor.sock")).expect("monitor socket");
    let mut writer = stream.try_clone().expect("clone");
    let mut monitor = BufReader::new(stream);
    assert!(until_prompt(&mut monitor).starts_with("vmpod monitor for VM echo"));
    let mut ask = |line: &str| {
        writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
        until_prompt(&mut monitor)
    };
    assert_eq!(ask("info status"), "VM status: running\r\n(vmpod) ");
    assert_eq!(ask("stop"), "(vmpod) ");
    assert_eq!(ask("info status"), "VM status: paused\r\n(vmpod) ");
    assert_eq!(ask("cont"), "(vmpod) ");
    assert_eq!(ask("info status"), "VM status: running\r\n(vmpod) ");
    assert_eq!(ask("info name"), "echo\r\n(vmpod) ");
    assert!(ask("help").contains("system_powerdown"));
    assert_eq!(
        ask("frobnicate"),
        "unknown command: 'frobnicate' (try 'help')\r\n(vmpod) "
    );
    power_off(vm, &run_dir);
}

fn ready(run_dir: &Path) -> (bool, String) {
    let output = Command::new(VMPOD)
        .arg("ready")
        .arg("--run-dir")
        .arg(run_dir)
        .output()
        .expect("ready runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn ready_waits_for_the_serial_pattern() {
    let scratch = Scratch::new("ready-pattern");
    let (vm, run_dir) = echo_vm(
        &scratch,
        "  annotations:\n    vmpod.io/ready-serial-pattern: \"login:\"\n",
    );
    let (is_ready, said) = ready(&run_dir);
    assert!(!is_ready, "{said}");
    assert!(
        said.contains("not ready: \"login:\" has not appeared on the serial console"),
        "{said}"
    );
    let mut console = UnixStream::connect(run_dir.join("serial.sock")).expect("serial");
    console.write_all(b"login: \n").expect("type"); // the echo guest prints it back
    let deadline = Instant::now() + WATCHDOG;
    while !ready(&run_dir).0 {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ready(&run_dir).1.trim(), "ready");
    power_off(vm, &run_dir);
    let (after, said) = ready(&run_dir);
    assert!(!after && said.contains("vmpod is not serving"), "{said}");
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn ready_without_a_pattern_means_running_and_links_name_the_helpers() {
    let scratch = Scratch::new("ready-links");
    let (vm, run_dir) = echo_vm(&scratch, "");
    // `launch` linked the helpers beside its run directory, as /vm/ready …
    let link = scratch.0.join("ready");
    assert_eq!(
        std::fs::read_link(&link).expect("link"),
        Path::new(VMPOD).canonicalize().expect("path")
    );
    let output = Command::new(&link)
        .arg("--run-dir")
        .arg(&run_dir)
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ready");
    power_off(vm, &run_dir);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn the_qmp_helper_relays_stdio() {
    let scratch = Scratch::new("qmp-helper");
    let (vm, run_dir) = echo_vm(&scratch, "");
    let output = run_helper(
        "qmp",
        &run_dir,
        br#"{"execute":"qmp_capabilities"}{"execute":"query-status","id":1}"#,
    );
    let lines: Vec<String> = BufReader::new(output.stdout.as_slice())
        .lines()
        .map(|l| l.expect("utf-8"))
        .collect();
    assert!(lines[0].starts_with(r#"{"QMP":"#), "{lines:?}");
    assert_eq!(lines[1], r#"{"return":{}}"#);
    assert_eq!(
        lines[2],
        r#"{"id":1,"return":{"running":true,"singlestep":false,"status":"running"}}"#
    );
    power_off(vm, &run_dir);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn send_key_types_on_the_ps2_keyboard() {
    let scratch = Scratch::new("send-key");
    let definition = scratch.definition("keyboard", &guest("keyboard.elf"), 1, "16Mi", "");
    let mut vm = launch(&definition);
    vm.expect("keyboard guest ready", WATCHDOG);
    let run_dir = common::run_dir_for(&definition);
    let qmp = |command: &str| {
        let input = format!(r#"{{"execute":"qmp_capabilities"}}{command}"#);
        String::from_utf8_lossy(&run_helper("qmp", &run_dir, input.as_bytes()).stdout).into_owned()
    };
    let reply = qmp(r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"a"}]}}"#);
    assert!(reply.contains(r#"{"return":{}}"#), "{reply}");
    vm.expect("scancode 0x0000009e", WATCHDOG);
    // HMP spelling, through QMP's human-monitor-command.
    qmp(
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"sendkey ctrl-alt-delete"}}"#,
    );
    vm.expect("scancode 0x0000009d", WATCHDOG);
    let unknown =
        qmp(r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"hyper"}]}}"#);
    assert!(
        unknown.contains("'hyper' is not a key vmpod knows"),
        "{unknown}"
    );
    qmp(r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"esc"}]}}"#);
    let run = vm.finish(WATCHDOG);
    let codes: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("scancode 0x000000"))
        .collect();
    assert_eq!(
        codes,
        ["1e", "9e", "1d", "38", "e0", "53", "e0", "d3", "b8", "9d", "01", "81"]
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}
