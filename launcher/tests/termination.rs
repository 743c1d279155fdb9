//! Pod deletion: SIGTERM presses the ACPI power button; a guest that powers
//! off ends vmpod with 0, one that ignores it is stopped at the deadline,
//! and a second SIGTERM stops it at once (exit 143 either way).

mod common;

use std::time::{Duration, Instant};

use common::{guest, kvm_available, launch, Scratch};

const WATCHDOG: Duration = Duration::from_secs(30);

#[test]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    if !kvm_available("sigterm_presses_the_power_button_and_the_guest_powers_off") {
        return;
    }
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
fn a_guest_that_ignores_the_power_button_is_stopped_at_the_deadline() {
    if !kvm_available("a_guest_that_ignores_the_power_button_is_stopped_at_the_deadline") {
        return;
    }
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
fn a_second_sigterm_stops_the_vm_at_once() {
    if !kvm_available("a_second_sigterm_stops_the_vm_at_once") {
        return;
    }
    let scratch = Scratch::new("sigterm-twice");
    let definition = scratch.definition("twice", &guest("echo.elf"), 1, "16Mi", "");
    let mut vm = launch(&definition);
    vm.expect("type and it echoes", WATCHDOG);
    vm.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    vm.signal(libc::SIGTERM);
    let run = vm.finish(WATCHDOG);
    assert!(
        run.stderr.contains("a second SIGTERM: stopping the VM now"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(143), "{}", run.stderr);
}
