//! Boot-configuration tests with real-shaped files: Debian's grub.cfg as
//! grub-mkconfig wrote it for the test image, Ubuntu's (submenu,
//! `$vt_handoff`, search hints), Fedora's EFI stub → /boot grub.cfg →
//! blscfg with grubenv, Alpine's extlinux, GRUB Legacy; then hostile
//! inputs, and seeded mutations that must never panic.

use std::collections::BTreeMap;

use super::bls;
use super::choose::{Files, FsSel, Location, Menu};
use super::extlinux;
use super::grub;

/// File systems of a pretend disk: (partition, UUID, label, files).
struct MockDisk {
    filesystems: Vec<(u32, &'static str, &'static str, BTreeMap<String, String>)>,
}

impl MockDisk {
    fn new() -> Self {
        Self {
            filesystems: Vec::new(),
        }
    }

    fn fs(mut self, partition: u32, uuid: &'static str, files: &[(&str, &str)]) -> Self {
        let files = files
            .iter()
            .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
            .collect();
        self.filesystems.push((partition, uuid, "", files));
        self
    }

    fn resolve(&self, base: usize, fs: &FsSel) -> Option<usize> {
        match fs {
            FsSel::This => Some(base),
            FsSel::Uuid(uuid) => self
                .filesystems
                .iter()
                .position(|f| f.1.eq_ignore_ascii_case(uuid)),
            FsSel::Label(label) => self.filesystems.iter().position(|f| f.2 == label),
            FsSel::Partition(number) => self.filesystems.iter().position(|f| f.0 == *number),
            FsSel::File(path) => self.filesystems.iter().position(|f| f.3.contains_key(path)),
        }
    }
}

impl Files for MockDisk {
    fn text(&self, base: usize, at: &Location) -> Result<Option<String>, String> {
        Ok(self
            .resolve(base, &at.fs)
            .and_then(|index| self.filesystems[index].3.get(&at.path).cloned()))
    }

    fn list(&self, base: usize, at: &Location) -> Result<Vec<String>, String> {
        let Some(index) = self.resolve(base, &at.fs) else {
            return Ok(Vec::new());
        };
        let prefix = format!("{}/", at.path.trim_end_matches('/'));
        let mut names: Vec<String> = self.filesystems[index]
            .3
            .keys()
            .filter_map(|path| path.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
            .collect();
        names.dedup();
        Ok(names)
    }
}

const DEBIAN_GRUB: &str = include_str!("testdata/debian-12-grub.cfg");
const DEBIAN_UUID: &str = "a408a203-d581-4daa-a62e-4506983f75e6";
const UBUNTU_GRUB: &str = include_str!("testdata/ubuntu-24.04-grub.cfg");
const FEDORA_STUB: &str = include_str!("testdata/fedora-efi-stub-grub.cfg");
const FEDORA_GRUB: &str = include_str!("testdata/fedora-boot-grub.cfg");
const FEDORA_BOOT_UUID: &str = "3c2e9d4f-1a2b-4c3d-8e9f-0a1b2c3d4e5f";

fn grub_menu(disk: &MockDisk, base: usize, path: &str, text: &str) -> Menu {
    grub::menu(disk, base, path, text)
        .expect("the configuration runs")
        .expect("it has entries")
        .0
}

fn default_entry(menu: &Menu) -> &super::BootEntry {
    &menu.entries[menu.default]
}

#[test]
fn debian_grub_cfg_boots_its_first_entry_from_the_searched_file_system() {
    let disk = MockDisk::new().fs(1, DEBIAN_UUID, &[("/boot/grub/grub.cfg", DEBIAN_GRUB)]);
    let menu = grub_menu(&disk, 0, "/boot/grub/grub.cfg", DEBIAN_GRUB);
    assert_eq!(menu.entries.len(), 3, "{menu:#?}");
    assert_eq!(menu.default, 0);
    let entry = default_entry(&menu);
    assert_eq!(entry.title, "Debian GNU/Linux");
    assert_eq!(
        entry.kernel,
        Location {
            fs: FsSel::Uuid(DEBIAN_UUID.to_owned()),
            path: "/boot/vmlinuz-6.1.0-50-cloud-amd64".to_owned()
        }
    );
    assert_eq!(
        entry.initrds[0].path,
        "/boot/initrd.img-6.1.0-50-cloud-amd64"
    );
    assert_eq!(
        entry.cmdline,
        format!("root=UUID={DEBIAN_UUID} ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0")
    );
    assert_eq!(
        menu.entries[2].title,
        "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-50-cloud-amd64 (recovery mode)"
    );
    assert!(menu.entries[2].cmdline.contains(" single "));
}

#[test]
fn a_grubenv_next_entry_or_saved_entry_chooses_another_entry() {
    // grub-reboot writes next_entry; GRUB_DEFAULT=saved reads saved_entry.
    let next = format!(
        "# GRUB Environment Block\nnext_entry=gnulinux-advanced-{DEBIAN_UUID}>gnulinux-6.1.0-50-cloud-amd64-recovery-{DEBIAN_UUID}\n{}",
        "#".repeat(900)
    );
    let disk = MockDisk::new().fs(
        1,
        DEBIAN_UUID,
        &[
            ("/boot/grub/grub.cfg", DEBIAN_GRUB),
            ("/boot/grub/grubenv", &next),
        ],
    );
    let menu = grub_menu(&disk, 0, "/boot/grub/grub.cfg", DEBIAN_GRUB);
    assert!(
        default_entry(&menu).title.ends_with("(recovery mode)"),
        "{menu:#?}"
    );

    let saved_config = DEBIAN_GRUB.replace("set default=\"0\"", "set default=\"${saved_entry}\"");
    let saved = "saved_entry=1>0\n";
    let disk = MockDisk::new().fs(1, DEBIAN_UUID, &[("/boot/grub/grubenv", saved)]);
    let menu = grub_menu(&disk, 0, "/boot/grub/grub.cfg", &saved_config);
    assert_eq!(menu.default, 1, "{menu:#?}");
}

#[test]
fn ubuntu_grub_cfg_with_hints_and_vt_handoff() {
    let disk = MockDisk::new()
        .fs(
            1,
            "0e4b3c1a-6f7e-4d55-9b8a-2c1d0f9e8a7b",
            &[("/boot/grub/grub.cfg", UBUNTU_GRUB)],
        )
        .fs(16, "7a1b2c3d-0000-4111-8222-933344445555", &[]);
    let menu = grub_menu(&disk, 0, "/boot/grub/grub.cfg", UBUNTU_GRUB);
    assert_eq!(menu.entries.len(), 3, "{menu:#?}");
    let entry = default_entry(&menu);
    assert_eq!(entry.title, "Ubuntu");
    // /boot is partition 16 (found by its UUID, the hints ignored).
    assert_eq!(
        entry.kernel.fs,
        FsSel::Uuid("7a1b2c3d-0000-4111-8222-933344445555".to_owned())
    );
    assert_eq!(entry.kernel.path, "/vmlinuz-6.8.0-45-generic");
    // gfxmode keep sets $vt_handoff, as on a real Ubuntu boot.
    assert_eq!(
        entry.cmdline,
        "root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0 vt.handoff=7"
    );
    assert_eq!(menu.entries[2].kernel.path, "/vmlinuz-6.8.0-40-generic");
}

fn fedora_entry(version: &str) -> String {
    format!(
        "title Fedora Linux ({version}) 40 (Cloud Edition)\nversion {version}\nlinux /vmlinuz-{version}\ninitrd /initramfs-{version}.img\noptions root=UUID=9d8e7f6a-1111-4222-8333-944455556666 ro rootflags=subvol=root $kernelopts console=ttyS0,115200n8\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class fedora\n"
    )
}

fn fedora_disk(grubenv: &str) -> MockDisk {
    let new = fedora_entry("6.10.6-200.fc40.x86_64");
    let old = fedora_entry("6.8.5-301.fc40.x86_64");
    let disk = MockDisk::new().fs(1, "7B77-95E7", &[("/EFI/fedora/grub.cfg", FEDORA_STUB)]);
    let leaked = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
    disk.fs(
        2,
        FEDORA_BOOT_UUID,
        &[
            ("/grub2/grub.cfg", FEDORA_GRUB),
            ("/grub2/grubenv", leaked(grubenv.to_owned())),
            (
                "/loader/entries/abc123-6.8.5-301.fc40.x86_64.conf",
                leaked(old),
            ),
            (
                "/loader/entries/abc123-6.10.6-200.fc40.x86_64.conf",
                leaked(new),
            ),
        ],
    )
}

#[test]
fn fedora_efi_stub_leads_to_blscfg_entries_newest_first_with_kernelopts() {
    let disk = fedora_disk("# GRUB Environment Block\nkernelopts=quiet mitigations=off\n");
    let menu = grub_menu(&disk, 0, "/EFI/fedora/grub.cfg", FEDORA_STUB);
    assert_eq!(menu.entries.len(), 2, "{menu:#?}");
    let entry = default_entry(&menu);
    assert_eq!(
        entry.title,
        "Fedora Linux (6.10.6-200.fc40.x86_64) 40 (Cloud Edition)"
    );
    assert_eq!(entry.kernel.fs, FsSel::Uuid(FEDORA_BOOT_UUID.to_owned()));
    assert_eq!(entry.kernel.path, "/vmlinuz-6.10.6-200.fc40.x86_64");
    assert_eq!(
        entry.initrds[0].path,
        "/initramfs-6.10.6-200.fc40.x86_64.img"
    );
    assert_eq!(
        entry.cmdline,
        "root=UUID=9d8e7f6a-1111-4222-8333-944455556666 ro rootflags=subvol=root quiet mitigations=off console=ttyS0,115200n8"
    );
}

#[test]
fn bls_entries_read_directly_honour_saved_entry() {
    let disk = fedora_disk("saved_entry=abc123-6.8.5-301.fc40.x86_64\n");
    let names = disk
        .list(1, &Location::here("/loader/entries"))
        .expect("list");
    let menu = bls::menu(&disk, 1, "/loader/entries", &names).expect("entries");
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        default_entry(&menu).kernel.path,
        "/vmlinuz-6.8.5-301.fc40.x86_64"
    );
    // The same through grub.cfg's blscfg (set default="${saved_entry}").
    let menu = grub_menu(&disk, 1, "/grub2/grub.cfg", FEDORA_GRUB);
    assert_eq!(
        default_entry(&menu).kernel.path,
        "/vmlinuz-6.8.5-301.fc40.x86_64"
    );
}

#[test]
fn kernel_versions_sort_as_rpm_sorts_them() {
    use std::cmp::Ordering::*;
    assert_eq!(
        bls::compare_versions("6.10.6-200.fc40", "6.8.5-301.fc40"),
        Greater
    );
    assert_eq!(bls::compare_versions("6.1.0-18", "6.1.0-9"), Greater);
    assert_eq!(
        bls::compare_versions("5.14.0-427.el9", "5.14.0-427.el9"),
        Equal
    );
    assert_eq!(bls::compare_versions("6.1", "6.1.1"), Less);
}

const ALPINE_EXTLINUX: &str = "# Generated by update-extlinux 6.04_pre1-r15
DEFAULT menu.c32
PROMPT 0
MENU TITLE Alpine/Linux Boot Menu
MENU HIDDEN
MENU AUTOBOOT Alpine will be booted automatically in # seconds.
TIMEOUT 10
LABEL virt
  MENU DEFAULT
  MENU LABEL Linux virt
  LINUX vmlinuz-virt
  INITRD initramfs-virt
  APPEND root=UUID=5f3c2a1b-0c9d-4e8f-a7b6-c5d4e3f2a1b0 modules=sd-mod,usb-storage,ext4 quiet rootfstype=ext4 console=ttyS0,115200

MENU SEPARATOR
";

#[test]
fn alpine_extlinux_boots_the_menu_default_with_paths_beside_the_config() {
    let disk = MockDisk::new().fs(1, "x", &[]);
    let menu = extlinux::menu(&disk, 0, "/boot/extlinux.conf", ALPINE_EXTLINUX).expect("menu");
    let entry = default_entry(&menu);
    assert_eq!(entry.title, "Linux virt");
    assert_eq!(entry.kernel.path, "/boot/vmlinuz-virt");
    assert_eq!(entry.initrds[0].path, "/boot/initramfs-virt");
    assert!(entry.cmdline.starts_with("root=UUID=5f3c2a1b"));
    assert!(entry.cmdline.ends_with("console=ttyS0,115200"));
}

#[test]
fn syslinux_default_label_append_initrd_and_include() {
    let included = "LABEL rescue\n  KERNEL /boot/vmlinuz-rescue\n  APPEND initrd=/boot/initrd-rescue.img,/boot/extra.img ro single\n";
    let config = "INCLUDE more.cfg\nDEFAULT rescue\nLABEL linux\n  KERNEL /boot/vmlinuz\n";
    let disk = MockDisk::new().fs(1, "x", &[("/boot/syslinux/more.cfg", included)]);
    let menu = extlinux::menu(&disk, 0, "/boot/syslinux/syslinux.cfg", config).expect("menu");
    let entry = default_entry(&menu);
    assert_eq!(entry.kernel.path, "/boot/vmlinuz-rescue");
    assert_eq!(entry.initrds.len(), 2);
    assert_eq!(entry.cmdline, "ro single");
    // An INCLUDE of itself ends at the nesting limit with an error.
    let looping = MockDisk::new().fs(
        1,
        "x",
        &[("/boot/syslinux/syslinux.cfg", "INCLUDE syslinux.cfg\n")],
    );
    let error = extlinux::menu(
        &looping,
        0,
        "/boot/syslinux/syslinux.cfg",
        "INCLUDE syslinux.cfg\n",
    )
    .expect_err("a loop");
    assert!(error.contains("nested more than"), "{error}");
}

#[test]
fn grub_legacy_menu_lst_counts_partitions_from_zero() {
    let menu_lst = "default 1\ntimeout 0\n\ntitle CirrOS old\nroot (hd0,0)\nkernel /boot/vmlinuz-old ro root=LABEL=cirros-rootfs\n\ntitle CirrOS\nroot (hd0,1)\nkernel /boot/vmlinuz-5.3.0 ro root=LABEL=cirros-rootfs console=tty1 console=ttyS0\ninitrd /boot/initrd.img-5.3.0\n";
    let menu = extlinux::grub_legacy_menu(menu_lst).expect("menu");
    let entry = default_entry(&menu);
    assert_eq!(entry.title, "CirrOS");
    assert_eq!(entry.kernel.fs, FsSel::Partition(2));
    assert_eq!(
        entry.cmdline,
        "ro root=LABEL=cirros-rootfs console=tty1 console=ttyS0"
    );
}

#[test]
fn hostile_grub_configurations_are_errors_not_hangs() {
    let disk = MockDisk::new().fs(1, "x", &[]);
    let run =
        |text: &str| grub::menu(&disk, 0, "/boot/grub/grub.cfg", text).map(|menu| menu.is_some());
    // Deep nesting.
    let deep = format!("{}{}", "if true; then\n".repeat(200), "fi\n".repeat(200));
    assert!(run(&deep).expect_err("deep").contains("nested more than"));
    // Endless recursion.
    let recursive = "function f {\n f\n}\nf\n";
    assert!(run(recursive)
        .expect_err("recursion")
        .contains("nested more than"));
    // Exponential work through functions that call each other.
    let mut fan_out = String::from("function f0 { true; }\n");
    for level in 1..12 {
        let previous = level - 1;
        let call = format!("f{previous}; ");
        fan_out.push_str(&format!("function f{level} {{ {} }}\n", call.repeat(4)));
    }
    fan_out.push_str("f11\n");
    assert!(run(&fan_out).expect_err("fan-out").contains("statements"));
    // Unbalanced braces and ifs.
    assert!(run("menuentry 'x' {\n linux /vmlinuz\n").is_err());
    assert!(run("if true; then\n set a=b\n").is_err());
    assert!(run("}\n").is_err());
    // A configfile that includes itself stops at the nesting limit.
    let selfish = MockDisk::new().fs(
        1,
        "x",
        &[("/boot/grub/grub.cfg", "source /boot/grub/grub.cfg\n")],
    );
    let error = grub::menu(
        &selfish,
        0,
        "/boot/grub/grub.cfg",
        "source /boot/grub/grub.cfg\n",
    )
    .expect_err("loop");
    assert!(error.contains("nested more than"), "{error}");
    // No entries: nothing to boot, not an error of its own.
    assert_eq!(run("set timeout=5\n"), Ok(false));
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn mutate(&mut self, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let alphabet = b"{}[]$\"'\\;\n #=>(),-abc0123456789";
        for _ in 0..(1 + self.next() % 8) {
            if bytes.is_empty() {
                break;
            }
            let at = (self.next() as usize) % bytes.len();
            match self.next() % 3 {
                0 => bytes[at] = alphabet[(self.next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => {
                    let end = (at + (self.next() as usize) % 200).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    let to = (self.next() as usize) % bytes.len();
                    bytes.splice(to..to, copy);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[test]
fn mutated_configurations_never_panic() {
    let fedora = fedora_disk("kernelopts=quiet\n");
    let debian = MockDisk::new().fs(1, DEBIAN_UUID, &[]);
    let mut mutator = Mutator(0x5eed_1234_abcd_0001);
    for _ in 0..1500 {
        let _ = grub::menu(
            &debian,
            0,
            "/boot/grub/grub.cfg",
            &mutator.mutate(DEBIAN_GRUB),
        );
        let _ = grub::menu(
            &debian,
            0,
            "/boot/grub/grub.cfg",
            &mutator.mutate(UBUNTU_GRUB),
        );
        let _ = grub::menu(&fedora, 1, "/grub2/grub.cfg", &mutator.mutate(FEDORA_GRUB));
        let _ = extlinux::menu(
            &debian,
            0,
            "/boot/extlinux.conf",
            &mutator.mutate(ALPINE_EXTLINUX),
        );
        let _ = extlinux::grub_legacy_menu(
            &mutator.mutate("default 0\ntitle a\nroot (hd0,0)\nkernel /k x\ninitrd /i\n"),
        );
        let _ = bls::parse_entry("x", &mutator.mutate(&fedora_entry("6.1")));
        let _ = bls::parse_grubenv(&mutator.mutate("saved_entry=a\nkernelopts=b\n"));
        let _ = bls::expand(&mutator.mutate("a $b ${c} ${d"), &|name| {
            Some(name.to_owned())
        });
    }
}
