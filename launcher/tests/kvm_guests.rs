//! KVM tests: real VMs on /dev/kvm running the project's tiny guests
//! (guests/), each under a watchdog, asserting what a user sees: the
//! guest's serial output on stdout and vmpod's exit status.

mod common;

use std::time::Duration;

use common::{guest, launch, Scratch};

const WATCHDOG: Duration = Duration::from_secs(30);

/// Where /dev/kvm is missing, build.rs marks every KVM test ignored; CI
/// must run them, so there its absence fails the suite.
#[test]
fn kvm_is_usable_wherever_ci_runs() {
    let kvm_tests_run = cfg!(vmpod_kvm);
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            kvm_tests_run,
            "CI=true but /dev/kvm was not usable when the tests were built: the KVM tests would be skipped"
        );
    }
}

fn run_to_end(test: &str, kernel: &str, cores: u32) -> common::Finished {
    let scratch = Scratch::new(test);
    let definition = scratch.definition(test, &guest(kernel), cores, "32Mi", "console=ttyS0");
    launch(&definition).finish(WATCHDOG)
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn hello_guest_prints_and_powers_off() {
    let run = run_to_end("hello", "hello.elf", 1);
    assert_eq!(run.stdout, "Hello from the vmpod tiny guest\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("the guest powered off"),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn poweroff_guest_finds_the_fadt_sleep_register_and_s5() {
    let run = run_to_end("poweroff", "poweroff.elf", 1);
    assert_eq!(
        run.stdout,
        "poweroff guest: \\_S5_ sleep type 5, sleep control register 0x00000600\n"
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn echo_guest_echoes_what_is_typed_and_powers_off_on_ctrl_d() {
    let scratch = Scratch::new("echo");
    let definition = scratch.definition("echo", &guest("echo.elf"), 1, "16Mi", "console=ttyS0");
    let mut vm = launch(&definition);
    vm.expect("type and it echoes", WATCHDOG);
    vm.type_text(b"hello from the test\n");
    vm.expect("hello from the test\n", WATCHDOG);
    // More than the UART's 64-byte FIFO in one go: nothing may be lost.
    let long_line = format!("{}\n", "0123456789abcdef".repeat(20));
    vm.type_text(long_line.as_bytes());
    vm.expect(&long_line, WATCHDOG);
    vm.type_text(b"\x04");
    let run = vm.finish(WATCHDOG);
    assert!(
        run.stdout.ends_with("echo guest: powering off\n"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn smp_guest_starts_every_vcpu_through_init_and_sipi() {
    let run = run_to_end("smp", "smp.elf", 4);
    for apic_id in 0..4 {
        assert!(
            run.stdout.contains(&format!("cpu {apic_id} up\n")),
            "{}",
            run.stdout
        );
    }
    assert!(run.stdout.ends_with("cpus up: 4\n"), "{}", run.stdout);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn reboot_guest_resets_three_ways_in_the_same_process() {
    let scratch = Scratch::new("reboot");
    let definition = scratch.definition("reboot", &guest("reboot.elf"), 1, "16Mi", "console=ttyS0");
    let mut vm = launch(&definition);
    let pid = vm.pid();
    let ready = "reboot guest ready";
    vm.expect_count(ready, 1, WATCHDOG);
    for (boot, key) in [(2, b"r"), (3, b"k"), (4, b"t")] {
        vm.type_text(key);
        vm.expect_count(ready, boot, WATCHDOG);
    }
    assert_eq!(vm.pid(), pid);
    vm.type_text(b"p");
    let run = vm.finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for reason in ["ACPI reset register", "i8042 reset line", "triple fault"] {
        assert!(
            run.stderr.contains(&format!("the guest reset ({reason})")),
            "{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("(boot 4)"), "{}", run.stderr);
    // Where the guest was: its empty IDT (limit 0) is why the #UD became a
    // triple fault. AMD's KVM resets the vCPU before reporting it, and
    // then the log says that instead.
    let registers_kept = run.stderr.contains("vCPU 0 triple-faulted at rip 0x")
        && run.stderr.contains("idt 0x0+0x0)");
    let registers_lost = run
        .stderr
        .contains("vCPU 0 triple-faulted; KVM reset it before saying so");
    assert!(registers_kept || registers_lost, "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn hostile_guest_is_answered_harmlessly() {
    let run = run_to_end("hostile", "hostile.elf", 1);
    for line in [
        "unmapped MMIO read: 0xffffffff",
        "read beyond RAM: 0xffffffff",
        "unknown port read: 0xffffffff",
        "PCI config read: 0xffffffff",
        "hostile guest: still alive",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in {}",
            run.stdout
        );
    }
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn bzimage_guest_boots_through_the_64_bit_protocol() {
    let scratch = Scratch::new("bzimage");
    let definition = scratch.definition(
        "bzimage",
        &guest("bzimage.bin"),
        1,
        "64Mi",
        "console=ttyS0 vmpod.test=42",
    );
    let run = common::launch(&definition).finish(WATCHDOG);
    assert!(
        run.stdout
            .contains("64-bit entry, command line: console=ttyS0 vmpod.test=42\n"),
        "{}",
        run.stdout
    );
    // 64 MiB less the legacy BIOS area, in whole MiB, over three RAM/reserved entries.
    assert!(
        run.stdout.contains("e820 entries: 3, RAM MiB: 63\n"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn pvm_hosts_get_a_warning() {
    let run = run_to_end("pvm-warning", "hello.elf", 1);
    let is_pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(
        run.stderr.contains("this host's KVM is PVM"),
        is_pvm,
        "{}",
        run.stderr
    );
}
