//! Booting a disk's own kernel: real file systems made by `mkfs.ext4 -d`
//! and real partition tables made by `sfdisk`, read by `vmpod
//! inspect-disk` and booted by `vmpod launch` (a tiny guest as the
//! "kernel"); then hostile disks, each a clear error and never a hang.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::disk_images::{
    disk, ext4, ext4_with_uuid, fat, grub_cfg, populate, run, tools_here, UUID,
};
use common::{guest, Scratch, VMPOD};

fn inspect(image: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(VMPOD)
        .arg("inspect-disk")
        .arg(image)
        .output()
        .expect("vmpod runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn inspect_disk_shows_partitions_entries_and_the_choice() {
    if !tools_here("inspect_disk") {
        return;
    }
    let scratch = Scratch::new("inspect-disk");
    let cfg = grub_cfg(
        1,
        &[
            ("first", "/boot/vmlinuz-6.1.0-1"),
            ("second", "/boot/vmlinuz-6.1.0-2"),
        ],
    );
    let root = ext4(
        &scratch,
        "root",
        &[
            ("/boot/grub/grub.cfg", cfg.as_bytes()),
            ("/boot/vmlinuz-6.1.0-1", b"kernel one"),
            ("/boot/vmlinuz-6.1.0-2", b"kernel two"),
            ("/boot/initrd.img", b"initrd"),
            (
                "/boot/config-6.1.0-2",
                b"CONFIG_VIRTIO=y\nCONFIG_VIRTIO_MMIO=m\n",
            ),
        ],
    );
    let raw = disk(&scratch, "debian.raw", "gpt", &[("linux", &root)]);
    let (code, stdout, stderr) = inspect(&raw);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("partition table: GPT"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "partition 1: 32Mi, Linux file system: ext2/3/4, UUID {UUID}, label \"root\""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("boot configuration: /boot/grub/grub.cfg on partition 1"),
        "{stdout}"
    );
    assert!(stdout.contains("  * 1: second"), "{stdout}");
    assert!(
        stdout.contains("  kernel  /boot/vmlinuz-6.1.0-2 on partition 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  cmdline root=UUID={UUID} ro console=ttyS0 entry=second"
        )),
        "{stdout}"
    );
    // validate says what the definition would boot, or why not.
    let definition = disk_definition(&scratch, "good", &raw);
    let output = Command::new(VMPOD)
        .arg("validate")
        .arg(&definition)
        .output()
        .expect("vmpod runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("  boots disk root: /boot/vmlinuz-6.1.0-2 (/boot/grub/grub.cfg on partition 1: \"second\"), command line: root=UUID="),
        "{said}"
    );
    let elsewhere = disk_definition(&scratch, "elsewhere", Path::new("/nonexistent/disk.img"));
    let output = Command::new(VMPOD)
        .arg("validate")
        .arg(&elsewhere)
        .output()
        .expect("vmpod runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("  boots disk root: its image is not here"));
    // The same disk as qcow2 reads the same.
    let qcow2 = scratch.0.join("debian.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let (code, qcow2_stdout, _) = inspect(&qcow2);
    assert_eq!(code, Some(0));
    assert_eq!(
        qcow2_stdout.lines().skip(1).collect::<Vec<_>>(),
        stdout.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn the_kernel_links_boot_an_mbr_disk_with_a_console_added() {
    if !tools_here("kernel_links") {
        return;
    }
    let scratch = Scratch::new("kernel-links");
    let root = ext4(
        &scratch,
        "root",
        &[
            ("/boot/vmlinuz-5.10.0-1", b"kernel"),
            ("/boot/initrd.img-5.10.0-1", b"initrd"),
            ("/vmlinuz", b"->boot/vmlinuz-5.10.0-1"),
            ("/initrd.img", b"->boot/initrd.img-5.10.0-1"),
        ],
    );
    let raw = disk(&scratch, "links.raw", "dos", &[("83", &root)]);
    let (code, stdout, stderr) = inspect(&raw);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("partition table: MBR"), "{stdout}");
    assert!(
        stdout.contains("boot configuration: the /vmlinuz link on partition 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  cmdline root=UUID={UUID} ro console=ttyS0")),
        "{stdout}"
    );
    assert!(
        stdout.contains("  initrd  /initrd.img on partition 1"),
        "{stdout}"
    );
}

/// The error `inspect-disk` gives for a disk holding `files`.
fn refusal(scratch: &Scratch, name: &str, files: &[(&str, &[u8])]) -> String {
    let root = ext4(scratch, name, files);
    let raw = disk(scratch, &format!("{name}.raw"), "gpt", &[("linux", &root)]);
    let (code, stdout, stderr) = inspect(&raw);
    assert_eq!(code, Some(2), "{name}: {stdout}{stderr}");
    assert!(
        stderr.starts_with("vmpod: error: boot disk "),
        "{name}: {stderr}"
    );
    // validate reports the same problem and fails.
    let definition = disk_definition(scratch, name, &raw);
    let output = Command::new(VMPOD)
        .arg("validate")
        .arg(&definition)
        .output()
        .expect("vmpod runs");
    assert_eq!(output.status.code(), Some(2), "{name}");
    // (inspect-disk names the disk by its file, validate by its name)
    let first_line = stderr.lines().next().unwrap_or_default();
    let problem = first_line
        .split_once(".raw: ")
        .map_or(first_line, |(_, problem)| problem);
    let validated = String::from_utf8_lossy(&output.stderr);
    assert!(
        validated.contains(&format!("boot disk root: {problem}")),
        "{name}: {validated}"
    );
    stderr
}

#[test]
fn hostile_and_unbootable_disks_are_clear_errors() {
    if !tools_here("hostile_disks") {
        return;
    }
    let scratch = Scratch::new("hostile-disks");
    let looped = refusal(
        &scratch,
        "loop",
        &[("/vmlinuz", b"->/boot/a"), ("/boot/a", b"->/vmlinuz")],
    );
    assert!(
        looped.contains("the kernel link /vmlinuz on partition 1: /vmlinuz: "),
        "{looped}"
    );

    let missing = refusal(
        &scratch,
        "missing",
        &[(
            "/boot/grub/grub.cfg",
            grub_cfg(0, &[("gone", "/boot/vmlinuz-gone")]).as_bytes(),
        )],
    );
    assert!(
        missing.contains("names /boot/vmlinuz-gone, which is not on the disk"),
        "{missing}"
    );

    let big_config = format!("{}\n", "set a=b\n".repeat(200_000));
    let too_big = refusal(
        &scratch,
        "big",
        &[("/boot/grub/grub.cfg", big_config.as_bytes())],
    );
    assert!(
        too_big.contains("more than the 1048576 bytes vmpod reads"),
        "{too_big}"
    );

    let no_mmio = refusal(
        &scratch,
        "nommio",
        &[
            (
                "/boot/grub/grub.cfg",
                grub_cfg(0, &[("el9", "/boot/vmlinuz-5.14.0-427.el9.x86_64")]).as_bytes(),
            ),
            ("/boot/vmlinuz-5.14.0-427.el9.x86_64", b"kernel"),
            ("/boot/initrd.img", b"initrd"),
            (
                "/boot/config-5.14.0-427.el9.x86_64",
                b"CONFIG_VIRTIO_PCI=y\n# CONFIG_VIRTIO_MMIO is not set\n",
            ),
        ],
    );
    assert!(
        no_mmio.contains("the kernel 5.14.0-427.el9.x86_64 is built without virtio-mmio"),
        "{no_mmio}"
    );

    // A 4 GiB "kernel" (sparse) is refused by size, before any read.
    let root = scratch.0.join("huge.root");
    populate(
        &root,
        &[
            (
                "/boot/grub/grub.cfg",
                grub_cfg(0, &[("huge", "/boot/vmlinuz-huge")]).as_bytes(),
            ),
            ("/boot/initrd.img", b"i"),
        ],
    );
    std::fs::File::create(root.join("boot/vmlinuz-huge"))
        .expect("kernel")
        .set_len(4 << 30)
        .expect("sparse");
    let image = scratch.0.join("huge.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", UUID, "-d"])
        .arg(&root)
        .arg(&image)
        .arg("64M"));
    let raw = disk(&scratch, "huge.raw", "gpt", &[("linux", &image)]);
    let stderr = launch_failure(&scratch, "huge", &raw);
    assert!(
        stderr.contains("is 4294967296 bytes, more than the 268435456 bytes vmpod reads for it"),
        "{stderr}"
    );
    // An initrd larger than the guest's 16 MiB is refused before it is read.
    let root = scratch.0.join("big-initrd.root");
    populate(&root, &[("/vmlinuz", b"kernel")]);
    std::fs::File::create(root.join("initrd.img"))
        .expect("initrd")
        .set_len(20 << 20)
        .expect("sparse");
    let image = scratch.0.join("big-initrd.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", UUID, "-d"])
        .arg(&root)
        .arg(&image)
        .arg("32M"));
    let raw = disk(&scratch, "big-initrd.raw", "gpt", &[("linux", &image)]);
    let stderr = launch_failure(&scratch, "big-initrd", &raw);
    assert!(
        stderr.contains(
            "/initrd.img is 20971520 bytes, more than the 16777216 bytes vmpod reads for it"
        ),
        "{stderr}"
    );

    // Partitions vmpod cannot read are named.
    let mut xfs = vec![0u8; 1 << 20];
    xfs[..4].copy_from_slice(b"XFSB");
    let mut luks = vec![0u8; 1 << 20];
    luks[..6].copy_from_slice(b"LUKS\xba\xbe");
    std::fs::write(scratch.0.join("xfs.img"), &xfs).expect("xfs");
    std::fs::write(scratch.0.join("luks.img"), &luks).expect("luks");
    let raw = disk(
        &scratch,
        "other.raw",
        "gpt",
        &[
            ("linux", &scratch.0.join("xfs.img")),
            ("linux", &scratch.0.join("luks.img")),
        ],
    );
    let (code, _, stderr) = inspect(&raw);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("partition 1 holds xfs, which vmpod cannot read yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains("partition 2 is encrypted (LUKS)"),
        "{stderr}"
    );

    // A damaged superblock (magic intact, block counts garbage).
    let root = ext4(&scratch, "damaged", &[("/vmlinuz", b"kernel")]);
    let mut bytes = std::fs::read(&root).expect("image");
    bytes[1024..1024 + 8].fill(0xff);
    bytes[1024 + 24..1024 + 32].fill(0xff);
    std::fs::write(&root, &bytes).expect("damage");
    let raw = disk(&scratch, "damaged.raw", "gpt", &[("linux", &root)]);
    let (code, _, stderr) = inspect(&raw);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("partition 1 (ext2/3/4) cannot be read (damaged"),
        "{stderr}"
    );

    // Random bytes: no table, no file system, no panic.
    let noise: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(scratch.0.join("noise.raw"), &noise).expect("noise");
    let (code, _, stderr) = inspect(&scratch.0.join("noise.raw"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no Linux kernel vmpod can boot: the disk: unknown contents"),
        "{stderr}"
    );
}

/// What `vmpod launch` says when booting `disk` fails (exit status 1).
fn launch_failure(scratch: &Scratch, name: &str, disk: &Path) -> String {
    let definition = disk_definition(scratch, name, disk);
    let output = common::launch_command(scratch, &definition)
        .output()
        .expect("vmpod runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// A VM booting `disk` (a hostDisk) with no kernelBoot.
fn disk_definition(scratch: &Scratch, name: &str, disk: &Path) -> PathBuf {
    let text = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  domain:
    memory: {{guest: 16Mi}}
    firmware: {{bootloader: {{bios: {{}}}}}}
    devices:
      autoattachPodInterface: false
      autoattachGraphicsDevice: false
      disks: [{{name: root}}]
  volumes:
  - {{name: root, hostDisk: {{path: {}, type: Disk}}}}
",
        disk.display()
    );
    let path = scratch.0.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("definition");
    path
}

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn the_disk_is_read_again_at_every_boot() {
    if !tools_here("read_again") {
        return;
    }
    let scratch = Scratch::new("disk-reboot");
    let reboot = std::fs::read(guest("reboot.elf")).expect("reboot guest");
    let hello = std::fs::read(guest("hello.elf")).expect("hello guest");
    let files = |default: u32| {
        vec![
            (
                "/boot/grub/grub.cfg".to_owned(),
                grub_cfg(
                    default,
                    &[
                        ("reboot", "/boot/vmlinuz-reboot"),
                        ("hello", "/boot/vmlinuz-hello"),
                    ],
                )
                .into_bytes(),
            ),
            ("/boot/vmlinuz-reboot".to_owned(), reboot.clone()),
            ("/boot/vmlinuz-hello".to_owned(), hello.clone()),
            ("/boot/initrd.img".to_owned(), b"initrd".to_vec()),
        ]
    };
    let borrowed = |files: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> { files.to_vec() };
    let first = borrowed(&files(0));
    let first: Vec<(&str, &[u8])> = first
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let root = ext4(&scratch, "first", &first);
    let raw = disk(&scratch, "boot.raw", "gpt", &[("linux", &root)]);
    let definition = disk_definition(&scratch, "rereads", &raw);
    let mut vm = common::launch_with(&mut common::launch_command(&scratch, &definition));
    vm.expect("reboot guest ready", Duration::from_secs(20));
    vm.expect_log(
        "(/boot/grub/grub.cfg on partition 1: \"reboot\")",
        Duration::from_secs(5),
    );
    // While it runs, the disk's grub.cfg changes its default (as
    // grub-set-default would); the next boot follows it.
    let second = borrowed(&files(1));
    let second: Vec<(&str, &[u8])> = second
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let updated = ext4(&scratch, "second", &second);
    let bytes = std::fs::read(updated).expect("image");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .expect("disk");
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 2048 * 512).expect("update");
    vm.type_text(b"r");
    vm.expect("Hello from the vmpod tiny guest", Duration::from_secs(20));
    let finished = vm.finish(Duration::from_secs(20));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("(/boot/grub/grub.cfg on partition 1: \"hello\")"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("kernel command line: root=UUID=6d3c1f0e-9a8b-4c7d-8e6f-5a4b3c2d1e0f ro console=ttyS0 entry=hello"), "{}", finished.stderr);
}

#[test]
fn an_esp_with_bls_entries_boots_and_one_with_only_ukis_is_named() {
    if !tools_here("esp") {
        return;
    }
    let scratch = Scratch::new("esp");
    let entry = b"title Fedora Linux (6.10.6-200.fc40.x86_64)\nversion 6.10.6-200.fc40.x86_64\nlinux /vmlinuz-6.10.6-200.fc40.x86_64\ninitrd /initramfs-6.10.6-200.fc40.x86_64.img\noptions root=UUID=1234 ro\n";
    let esp = fat(
        &scratch,
        "bls",
        &[
            ("/loader/entries/machine-6.10.6-200.fc40.x86_64.conf", entry),
            ("/vmlinuz-6.10.6-200.fc40.x86_64", b"kernel"),
            ("/initramfs-6.10.6-200.fc40.x86_64.img", b"initrd"),
        ],
    );
    let raw = disk(&scratch, "bls.raw", "gpt", &[("uefi", &esp)]);
    let (code, stdout, stderr) = inspect(&raw);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("partition 1: 32Mi, EFI system partition: FAT, UUID "),
        "{stdout}"
    );
    assert!(
        stdout.contains("boot configuration: BLS entries in /loader/entries on partition 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  cmdline root=UUID=1234 ro console=ttyS0"),
        "{stdout}"
    );

    let uki = fat(&scratch, "uki", &[("/EFI/Linux/fedora-6.10.efi", b"MZ")]);
    let raw = disk(&scratch, "uki.raw", "gpt", &[("uefi", &uki)]);
    let (code, _, stderr) = inspect(&raw);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("partition 1 holds only unified kernel images (/EFI/Linux/fedora-6.10.efi), which vmpod cannot boot yet"),
        "{stderr}"
    );
}

/// Makes FAT directory `name` (in the root directory of a FAT16 image)
/// loop: its cluster points back at itself and holds only deleted
/// entries, so a reader following it would never reach its end.
fn make_directory_loop(image: &mut [u8], name: &[u8; 11]) {
    let le16 = |at: usize| usize::from(u16::from_le_bytes([image[at], image[at + 1]]));
    let (bytes_per_sector, sectors_per_cluster) = (le16(11), usize::from(image[13]));
    let (reserved, fats, root_entries, fat_sectors) =
        (le16(14), usize::from(image[16]), le16(17), le16(22));
    assert!(fat_sectors > 0, "a FAT12/16 image");
    let root = (reserved + fats * fat_sectors) * bytes_per_sector;
    let entry = (0..root_entries)
        .map(|index| root + index * 32)
        .find(|&at| &image[at..at + 11] == name)
        .expect("the directory's entry");
    let cluster = le16(entry + 26);
    for fat in 0..fats {
        let at = (reserved + fat * fat_sectors) * bytes_per_sector + cluster * 2;
        image[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
    }
    let data = root + root_entries * 32 + (cluster - 2) * sectors_per_cluster * bytes_per_sector;
    image[data..data + sectors_per_cluster * bytes_per_sector].fill(0xe5);
}

#[test]
fn a_looping_fat_directory_is_an_error_not_a_hang() {
    if !tools_here("fat_loop") {
        return;
    }
    let scratch = Scratch::new("fat-loop");
    let esp = fat(&scratch, "loop", &[("/loader/placeholder", b"x")]);
    let mut bytes = std::fs::read(&esp).expect("image");
    make_directory_loop(&mut bytes, b"LOADER     ");
    std::fs::write(&esp, bytes).expect("image");
    let raw = disk(&scratch, "loop.raw", "gpt", &[("uefi", &esp)]);
    let started = std::time::Instant::now();
    let (code, _, stderr) = inspect(&raw);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/loader/entries: "), "{stderr}");
    assert!(stderr.contains("loops or is damaged"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_ubuntu_layout_boots_through_the_esp_stub_to_a_separate_boot() {
    if !tools_here("ubuntu_layout") {
        return;
    }
    // Ubuntu 24.04's cloud image: the root (p1) has an empty /boot, the
    // ESP's grub.cfg finds the BOOT partition by UUID and hands over to
    // the grub.cfg there, whose entries name /vmlinuz-… on it.
    let scratch = Scratch::new("ubuntu-layout");
    let boot_uuid = "0f0e0d0c-0b0a-4909-8807-060504030201";
    let root = ext4(
        &scratch,
        "root",
        &[("/boot/.keep", b""), ("/etc/hostname", b"ubuntu")],
    );
    let stub = format!(
        "search.fs_uuid {boot_uuid} root\nset prefix=($root)'/grub'\nconfigfile $prefix/grub.cfg\n"
    );
    let esp = fat(
        &scratch,
        "esp",
        &[("/EFI/ubuntu/grub.cfg", stub.as_bytes())],
    );
    let cfg = format!(
        "set default=\"0\"\nmenuentry 'Ubuntu' --class ubuntu $menuentry_id_option 'gnulinux-simple' {{\n\tsearch --no-floppy --fs-uuid --set=root {boot_uuid}\n\tlinux\t/vmlinuz-6.8.0-45-generic root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0\n\tinitrd\t/initrd.img-6.8.0-45-generic\n}}\n"
    );
    let boot = ext4_with_uuid(
        &scratch,
        "boot",
        boot_uuid,
        &[
            ("/grub/grub.cfg", cfg.as_bytes()),
            ("/vmlinuz-6.8.0-45-generic", b"kernel"),
            ("/initrd.img-6.8.0-45-generic", b"initrd"),
            ("/config-6.8.0-45-generic", b"CONFIG_VIRTIO_MMIO=y\n"),
        ],
    );
    let raw = disk(
        &scratch,
        "ubuntu.raw",
        "gpt",
        &[("linux", &root), ("uefi", &esp), ("linux", &boot)],
    );
    let (code, stdout, stderr) = inspect(&raw);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("boot configuration: /EFI/ubuntu/grub.cfg on partition 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  kernel  /vmlinuz-6.8.0-45-generic on partition 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  initrd  /initrd.img-6.8.0-45-generic on partition 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  cmdline root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0\n"),
        "{stdout}"
    );
}
