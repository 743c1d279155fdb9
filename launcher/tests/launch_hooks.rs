//! `launch.d` hooks with the real binary and a tiny guest: run in name
//! order with the configuration and identity in their environment, their
//! output in the log; a failing hook stops the launch before the VM
//! starts; a hook that edits the configuration changes the VM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{guest, launch_command, Scratch};

fn hook(dir: &Path, name: &str, script: &str, executable: bool) {
    std::fs::create_dir_all(dir).expect("hook dir");
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("hook");
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn launch(scratch: &Scratch, definition: &Path, hooks: &Path) -> common::Finished {
    common::launch_with(
        launch_command(scratch, definition)
            .arg("--launch-dir")
            .arg(hooks),
    )
    .finish(Duration::from_secs(20))
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn hooks_run_in_name_order_with_the_configuration_and_identity() {
    let scratch = Scratch::new("hooks-order");
    let definition = scratch.definition("hooked", &guest("hello.elf"), 1, "16Mi", "console=ttyS0");
    let hooks = scratch.0.join("launch.d");
    let record = scratch.0.join("record");
    let line = format!(
        "echo \"$(basename \"$0\") $VMPOD_VM_NAMESPACE/$VMPOD_VM_NAME $VMPOD_VM_UUID $(grep -c 'name: hooked' \"$VMPOD_CONFIG\")\" >> {}\n",
        record.display()
    );
    hook(
        &hooks,
        "20-second",
        &format!("{line}echo second says hello; echo to stderr >&2\n"),
        true,
    );
    hook(&hooks, "10-first", &line, true);
    hook(&hooks, "30-not-executable", &line, false);
    hook(&hooks, "40-skipped.sh", &line, true); // a dot: run-parts skips it
    let finished = launch(&scratch, &definition, &hooks);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished.stdout.contains("Hello from the vmpod tiny guest"),
        "{}",
        finished.stdout
    );
    let recorded = std::fs::read_to_string(&record).expect("the hooks ran");
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(lines.len(), 2, "{recorded}");
    assert!(
        lines[0].starts_with("10-first default/hooked "),
        "{recorded}"
    );
    assert!(
        lines[1].starts_with("20-second default/hooked "),
        "{recorded}"
    );
    assert!(
        !lines[0].ends_with(" 0"),
        "the rendered configuration names the VM: {recorded}"
    );
    assert!(
        finished
            .stderr
            .contains("launch.d/20-second: second says hello"),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("launch.d/20-second: to stderr"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("30-not-executable (not executable)"),
        "{}",
        finished.stderr
    );
}

#[test]
fn a_failing_hook_stops_the_launch_with_its_output() {
    let scratch = Scratch::new("hooks-fail");
    let definition = scratch.definition("failing", &guest("hello.elf"), 1, "16Mi", "console=ttyS0");
    let hooks = scratch.0.join("launch.d");
    hook(
        &hooks,
        "10-check-network",
        "echo checking; echo no route to the image server >&2; exit 3\n",
        true,
    );
    hook(
        &hooks,
        "20-never",
        &format!("touch {}\n", scratch.0.join("ran").display()),
        true,
    );
    let finished = launch(&scratch, &definition, &hooks);
    assert_eq!(finished.code, Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("10-check-network failed (exit status: 3), so the VM was not started; its output:\nchecking\nno route to the image server"),
        "{}",
        finished.stderr
    );
    assert!(!scratch.0.join("ran").exists(), "later hooks do not run");
    assert!(
        !finished.stdout.contains("Hello"),
        "the guest never ran: {}",
        finished.stdout
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_hook_that_edits_the_configuration_changes_the_vm() {
    let scratch = Scratch::new("hooks-edit");
    let definition = scratch.definition("edited", &guest("hello.elf"), 1, "16Mi", "console=ttyS0");
    let hooks = scratch.0.join("launch.d");
    // Boot the echo guest instead of the hello guest.
    let from = guest("hello.elf").display().to_string();
    let to = guest("echo.elf").display().to_string();
    hook(
        &hooks,
        "50-swap-kernel",
        &format!("sed -i 's|{from}|{to}|' \"$VMPOD_CONFIG\"\n"),
        true,
    );
    let mut vm = common::launch_with(
        launch_command(&scratch, &definition)
            .arg("--launch-dir")
            .arg(&hooks),
    );
    vm.expect("vmpod echo guest", Duration::from_secs(20));
    vm.type_text(b"\x04");
    let finished = vm.finish(Duration::from_secs(20));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("launch.d: the hooks changed the VM's configuration"),
        "{}",
        finished.stderr
    );

    // A hook that leaves nonsense stops the launch and says where.
    let broken = scratch.0.join("broken.d");
    hook(
        &broken,
        "10-break",
        "echo 'memoryBytes: lots' >> \"$VMPOD_CONFIG\"\n",
        true,
    );
    let finished = launch(&scratch, &definition, &broken);
    assert_eq!(finished.code, Some(1), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("the launch.d hooks left a configuration vmpod cannot use in "),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("vm.yaml"), "{}", finished.stderr);

    // One that leaves a huge file is refused before it is read.
    let huge = scratch.0.join("huge.d");
    hook(
        &huge,
        "10-grow",
        "head -c 2097152 /dev/zero | tr '\\0' '#' >> \"$VMPOD_CONFIG\"\n",
        true,
    );
    let finished = launch(&scratch, &definition, &huge);
    assert_eq!(finished.code, Some(1), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("bytes; a VM configuration is a few KiB"),
        "{}",
        finished.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn the_example_hooks_describe_the_vm_and_guard_the_scratch_space() {
    let scratch = Scratch::new("hooks-examples");
    let definition = scratch.definition("example", &guest("hello.elf"), 2, "16Mi", "console=ttyS0");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../launch.d");
    let finished = launch(&scratch, &definition, &examples);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("launch.d/10-describe-vm: VM default/example (uuid "),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains(": 2 vCPUs, 16 MiB, boots from its kernel"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("launch.d/50-require-scratch-space: scratch directory "),
        "{}",
        finished.stderr
    );

    let demanding = common::launch_with(
        launch_command(&scratch, &definition)
            .arg("--launch-dir")
            .arg(&examples)
            .env("VMPOD_MIN_SCRATCH_MIB", "999999999"),
    )
    .finish(Duration::from_secs(20));
    assert_eq!(demanding.code, Some(1), "{}", demanding.stderr);
    assert!(
        demanding.stderr.contains("50-require-scratch-space failed"),
        "{}",
        demanding.stderr
    );
    assert!(
        demanding
            .stderr
            .contains("less than the 999999999 MiB this VM needs"),
        "{}",
        demanding.stderr
    );
}
