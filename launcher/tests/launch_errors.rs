//! `vmpod launch` failures a user will meet, each with a message that says
//! what is wrong and what to do, and a non-zero exit status.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{guest, launch, launch_with, run_dir_for, Scratch, VMPOD};

const WATCHDOG: Duration = Duration::from_secs(30);

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_missing_kernel_is_named() {
    let scratch = Scratch::new("missing-kernel");
    let definition = scratch.definition(
        "nokernel",
        std::path::Path::new("/nonexistent/vmlinuz"),
        1,
        "16Mi",
        "",
    );
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot open the kernel /nonexistent/vmlinuz"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("caused by: No such file or directory"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_empty_definition_file_is_called_empty() {
    // What a pod sees when its ConfigMap has an empty key, or a runtime
    // (podman 4) is rewriting the ConfigMap's file in place.
    let scratch = Scratch::new("empty-definition");
    let definition = scratch.0.join("vm.yaml");
    std::fs::write(&definition, "").expect("write");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "vmpod: error: {}: no VirtualMachine or VirtualMachineInstance (it is empty)",
            definition.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_file_that_is_not_a_kernel_is_named() {
    let scratch = Scratch::new("not-a-kernel");
    let bogus = scratch.0.join("notes.txt");
    std::fs::write(&bogus, "just some text, not a kernel\n".repeat(100)).expect("write");
    let definition = scratch.definition("bogus", &bogus, 1, "16Mi", "");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "notes.txt is not a kernel vmpod can boot: expected a bzImage or an ELF vmlinux"
        ),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn memory_the_host_cannot_hold_is_refused_before_boot() {
    let scratch = Scratch::new("too-much-memory");
    let definition = scratch.definition("huge", &guest("hello.elf"), 1, "1Ti", "");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("guest memory (1Ti) is more than this host has"),
        "{}",
        run.stderr
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_pod_without_dev_kvm_is_told_how_to_pass_it_in() {
    if !is_root() {
        common::not_here(
            "a_pod_without_dev_kvm_is_told_how_to_pass_it_in",
            "needs root for a mount namespace",
        );
        return;
    }
    let scratch = Scratch::new("no-kvm");
    let definition = scratch.definition("nokvm", &guest("hello.elf"), 1, "16Mi", "");
    // A private mount namespace whose /dev is an empty tmpfs, as in a pod
    // that did not mount the device.
    let run = launch_in_namespace(&definition, "mount -t tmpfs none /dev");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("/dev/kvm does not exist"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hostPath volume of type CharDevice"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_user_without_access_to_dev_kvm_is_told_so() {
    if !is_root() || !std::path::Path::new("/dev/kvm").exists() {
        common::not_here(
            "a_user_without_access_to_dev_kvm_is_told_so",
            "needs root (a mount namespace) and /dev/kvm",
        );
        return;
    }
    let scratch = Scratch::new("kvm-denied");
    let definition = scratch.definition("denied", &guest("hello.elf"), 1, "16Mi", "");
    for (path, mode) in [(&scratch.0, 0o755), (&definition, 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    // In a mount namespace of its own: a /dev/kvm of mode 0600, whatever
    // the host's is, and vmpod as nobody.
    let devices = scratch.0.join("dev");
    std::fs::create_dir(&devices).expect("mkdir");
    let run = launch_in_namespace_as(
        &definition,
        &format!(
            "mount -t tmpfs none {d} && mknod -m 0600 {d}/kvm c 10 232 && mount --bind {d}/kvm /dev/kvm",
            d = devices.display()
        ),
        "setpriv --reuid=65534 --regid=65534 --clear-groups",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "permission denied on /dev/kvm (mode 0600, owner 0:0; vmpod runs as uid 65534, groups 65534): in a pod, add the device's group to securityContext.supplementalGroups"
        ),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_missing_initrd_is_named() {
    let scratch = Scratch::new("missing-initrd");
    let definition = scratch.0.join("initrd.yaml");
    std::fs::write(
        &definition,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: initrd}}\n\
             spec:\n  domain:\n    memory: {{guest: 16Mi}}\n    firmware:\n      kernelBoot:\n        container:\n\
             \x20         kernelPath: {}\n          initrdPath: /nonexistent/initrd.img\n\
             \x20   devices: {{autoattachPodInterface: false, autoattachGraphicsDevice: false}}\n",
            guest("hello.elf").display()
        ),
    )
    .expect("write definition");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot read the initrd /nonexistent/initrd.img"),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn input_devices_are_built_and_a_usb_bus_is_noted_not_refused() {
    let scratch = Scratch::new("input-devices");
    let definition = scratch.definition_with("inputs", &guest("hello.elf"), 1, "16Mi", "", "");
    let text = std::fs::read_to_string(&definition).expect("read").replace(
        "devices: {autoattachPodInterface: false,",
        "devices: {inputs: [{name: tablet, type: tablet, bus: usb}, {name: keys, type: keyboard, bus: virtio}], autoattachPodInterface: false,",
    );
    std::fs::write(&definition, text).expect("write");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for line in [
        "input tablet: virtio tablet",
        "input keys: virtio keyboard",
        "vmpod's input devices are virtio, so this usb one is a virtio device",
    ] {
        assert!(run.stderr.contains(line), "{line}: {}", run.stderr);
    }
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_missing_disk_file_is_named_with_its_disk() {
    let scratch = Scratch::new("missing-disk");
    let image = scratch.0.join("absent.img");
    let definition = scratch.definition_with(
        "nodisk",
        &guest("hello.elf"),
        1,
        "16Mi",
        "",
        &format!(
            "  volumes: [{{name: data, hostDisk: {{path: {}, type: Disk}}}}]\n",
            image.display()
        ),
    );
    let text = std::fs::read_to_string(&definition).expect("read").replace(
        "devices: {autoattachPodInterface: false,",
        "devices: {disks: [{name: data}], autoattachPodInterface: false,",
    );
    std::fs::write(&definition, text).expect("write");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "vmpod: error: disk data: cannot open {}: No such file or directory (os error 2); check that the volume is mounted there and readable and writable",
            image.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_missing_passt_is_named_with_the_nic_and_what_to_install() {
    let scratch = Scratch::new("no-passt");
    let definition = scratch.definition("nopasst", &guest("hello.elf"), 1, "16Mi", "");
    // The pod network, as a pasted VM has it.
    let text = std::fs::read_to_string(&definition).expect("read").replace(
        "autoattachPodInterface: false",
        "autoattachPodInterface: true",
    );
    std::fs::write(&definition, text).expect("write");
    let run = launch_with(
        Command::new(VMPOD)
            .args(["launch", "--file"])
            .arg(&definition)
            .arg("--run-dir")
            .arg(run_dir_for(&definition))
            .env("VMPOD_PASST", scratch.0.join("no/passt")),
    )
    .finish(WATCHDOG);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "vmpod: error: NIC default: passt is not installed (looked for VMPOD_PASST={}); install Debian's passt package",
            scratch.0.join("no/passt").display()
        )),
        "{}",
        run.stderr
    );
}

/// Runs `vmpod launch` in a private mount namespace that `setup` (shell)
/// shaped first, as a pod's container would see the machine.
fn launch_in_namespace(definition: &std::path::Path, setup: &str) -> common::Finished {
    launch_in_namespace_as(definition, setup, "")
}

/// [`launch_in_namespace`] with vmpod started through `runner` (`setpriv …`).
fn launch_in_namespace_as(
    definition: &std::path::Path,
    setup: &str,
    runner: &str,
) -> common::Finished {
    let script = format!(
        "{setup} && exec {runner} {VMPOD} launch --file {} --run-dir {}",
        definition.display(),
        common::run_dir_for(definition).display()
    );
    launch_with(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]))
    .finish(WATCHDOG)
}

/// [`launch_in_namespace`] with a /sys/fs/cgroup holding `files`, as a
/// container sees its own cgroup (v2).
fn launch_in_cgroup(definition: &std::path::Path, files: &[(&str, &str)]) -> common::Finished {
    let mut setup = String::from("mount -t tmpfs none /sys/fs/cgroup");
    for (name, content) in files {
        setup.push_str(&format!(" && echo '{content}' > /sys/fs/cgroup/{name}"));
    }
    launch_in_namespace(definition, &setup)
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn a_vm_larger_than_the_pods_limits_is_refused_with_what_to_change() {
    if !is_root() {
        common::not_here(
            "a_vm_larger_than_the_pods_limits_is_refused_with_what_to_change",
            "needs root for a mount namespace",
        );
        return;
    }
    let scratch = Scratch::new("pod-limits");
    let big = scratch.definition("big", &guest("hello.elf"), 1, "56Mi", "");
    let run = launch_in_cgroup(
        &big,
        &[("memory.max", "67108864"), ("cpu.max", "max 100000")],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "guest memory (56Mi) plus vmpod's overhead (16Mi) does not fit the container's memory limit (64Mi, from /sys/fs/cgroup/memory.max): raise the pod's resources.limits.memory or lower domain.memory.guest"
        ),
        "{}",
        run.stderr
    );
    let wide = scratch.definition("wide", &guest("hello.elf"), 4, "16Mi", "");
    let run = launch_in_cgroup(
        &wide,
        &[("memory.max", "max"), ("cpu.max", "150000 100000")],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors, ["vmpod: error: the VM has 4 vCPUs but the container's CPU limit allows 1.5 CPUs (from /sys/fs/cgroup/cpu.max): raise the pod's resources.limits.cpu to 4 or lower the VM's vCPUs (domain.cpu)"], "{}", run.stderr);
    let fits = scratch.definition("fits", &guest("hello.elf"), 2, "16Mi", "");
    let run = launch_in_cgroup(
        &fits,
        &[("memory.max", "67108864"), ("cpu.max", "150000 100000")],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}
