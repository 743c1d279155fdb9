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

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn query_block_and_info_block_list_the_vms_disks() {
    let scratch = Scratch::new("query-block");
    let definition = scratch.0.join("disks.yaml");
    let data = scratch.0.join("data.img");
    std::fs::write(
        &definition,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: disks}}\n\
             spec:\n  domain:\n    memory: {{guest: 16Mi}}\n    firmware: {{kernelBoot: {{container: {{kernelPath: {}}}}}}}\n\
             \x20   devices:\n      autoattachPodInterface: false\n      autoattachGraphicsDevice: false\n\
             \x20     disks: [{{name: data}}, {{name: scratch, disk: {{readonly: true}}}}]\n\
             \x20 volumes:\n  - {{name: data, hostDisk: {{path: {}, type: DiskOrCreate, capacity: 8Mi}}}}\n\
             \x20 - {{name: scratch, emptyDisk: {{capacity: 1Mi}}}}\n",
            guest("echo.elf").display(),
            data.display()
        ),
    )
    .expect("write definition");
    let run_dir = scratch.0.join("run");
    let mut vm = common::launch_with(
        Command::new(VMPOD)
            .args(["launch", "--file"])
            .arg(&definition)
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--scratch-dir")
            .arg(scratch.0.join("scratch")),
    );
    vm.expect("type and it echoes", WATCHDOG);
    let reply = run_helper(
        "qmp",
        &run_dir,
        br#"{"execute":"qmp_capabilities"}{"execute":"query-block","id":1}"#,
    );
    let lines: Vec<serde_json::Value> = BufReader::new(reply.stdout.as_slice())
        .lines()
        .map(|line| serde_json::from_str(&line.expect("utf-8")).expect("JSON"))
        .collect();
    let disks = &lines[2]["return"];
    assert_eq!(disks[0]["device"], "data", "{lines:?}");
    assert_eq!(disks[0]["inserted"]["file"], data.display().to_string());
    assert_eq!(disks[0]["inserted"]["image"]["virtual-size"], 8 << 20);
    assert_eq!(disks[0]["inserted"]["ro"], false);
    assert_eq!(disks[1]["device"], "scratch");
    assert_eq!(disks[1]["inserted"]["ro"], true);
    assert_eq!(
        disks[1]["inserted"]["file"],
        scratch.0.join("scratch/scratch.img").display().to_string()
    );
    let monitor = run_helper("monitor", &run_dir, b"info block\n");
    let text = String::from_utf8_lossy(&monitor.stdout);
    assert!(
        text.contains(&format!("data: {} (raw, 8388608 bytes)", data.display())),
        "{text}"
    );
    power_off(vm, &run_dir);
}
