//! Pod deletion: SIGTERM presses the ACPI power button; a guest that powers
//! off ends vmpod with 0, one that ignores it is stopped at the deadline,
//! and a second SIGTERM stops it at once (exit 143 either way).

mod common;

use std::time::{Duration, Instant};

use common::{guest, launch, run_dir_for, run_helper, Scratch};

const WATCHDOG: Duration = Duration::from_secs(30);

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    let scratch = Scratch::new("sigterm-listens");
    let definition = scratch.definition("powerbutton", &guest("powerbutton.elf"), 1, "16Mi", "");
    let mut vm = launch(&definition);
    vm.expect("waiting for the power button", WATCHDOG);
    vm.signal(libc::SIGTERM);
    let run = vm.finish(WATCHDOG);
    assert!(
        run.stdout.contains("power button pressed, powering off"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("SIGTERM: pressing the ACPI power button; the guest has 170 s"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_guest_that_ignores_the_power_button_is_stopped_at_the_deadline() {
    let scratch = Scratch::new("sigterm-ignored");
    let definition = scratch.definition_with(
        "ignores",
        &guest("echo.elf"),
        1,
        "16Mi",
        "",
        "  terminationGracePeriodSeconds: 3\n",
    );
    let mut vm = launch(&definition);
    vm.expect("type and it echoes", WATCHDOG);
    let sent = Instant::now();
    vm.signal(libc::SIGTERM);
    let run = vm.finish(WATCHDOG);
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "stopped before the deadline"
    );
    assert!(
        run.stderr
            .contains("the guest did not power off within 2 s of the power button: stopping it"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(143), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_second_sigterm_stops_the_vm_at_once() {
    let scratch = Scratch::new("sigterm-twice");
    let definition = scratch.definition("twice", &guest("echo.elf"), 1, "16Mi", "");
    let mut vm = launch(&definition);
    vm.expect("type and it echoes", WATCHDOG);
    sigterm_twice_stops(vm);
}

/// A VM whose guest resets itself on every boot: the VMM spends most of
/// its time between boots, where a command must not be lost.
fn resetting_vm(test: &str) -> (common::Running, std::path::PathBuf, Scratch) {
    let scratch = Scratch::new(test);
    let definition = scratch.definition("resetloop", &guest("resetloop.elf"), 1, "16Mi", "");
    let mut vm = launch(&definition);
    vm.expect_count("resetting", 3, WATCHDOG);
    (vm, run_dir_for(&definition), scratch)
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_quit_sent_while_the_guest_resets_still_ends_the_vm() {
    let (vm, run_dir, _scratch) = resetting_vm("quit-resetting");
    let reply = run_helper(
        "qmp",
        &run_dir,
        br#"{"execute":"qmp_capabilities"}{"execute":"quit","id":"q"}"#,
    );
    let reply = String::from_utf8_lossy(&reply.stdout);
    assert!(reply.contains(r#"{"id":"q","return":{}}"#), "{reply}");
    let run = vm.finish(WATCHDOG);
    assert!(
        run.stderr.contains("stopped by a quit command"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_second_sigterm_while_the_guest_resets_still_stops_the_vm() {
    let (vm, _, _scratch) = resetting_vm("sigterm-resetting");
    sigterm_twice_stops(vm);
}

/// SIGTERM (the power button), then SIGTERM again once vmpod said so:
/// the VM is stopped at once, with exit status 143.
fn sigterm_twice_stops(mut vm: common::Running) {
    vm.signal(libc::SIGTERM);
    vm.expect_log("SIGTERM: pressing the ACPI power button", WATCHDOG);
    vm.signal(libc::SIGTERM);
    let run = vm.finish(WATCHDOG);
    assert!(
        run.stderr.contains("a second SIGTERM: stopping the VM now"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(143), "{}", run.stderr);
}
