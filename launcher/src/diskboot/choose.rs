//! Choosing what to boot: the configuration formats in the order a
//! distribution's bootloader would honour them (BLS entries, extlinux,
//! grub.cfg, GRUB Legacy, the kernel links), on each file system in
//! partition order; then the chosen entry's files, checked and staged.

use super::filesystems::{FsKind, Mounted};
use super::{bls, extlinux, grub, Disk, DiskBootError, MAX_CONFIG, MAX_INITRD, MAX_KERNEL};

/// Which file system a path is on, as a configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSel {
    /// The one the configuration file was read from.
    This,
    Uuid(String),
    Label(String),
    /// 1-based partition number (GRUB's `(hd0,gpt2)`).
    Partition(u32),
    /// The first file system holding this file (GRUB's `search --file`).
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub fs: FsSel,
    pub path: String,
}

impl Location {
    pub fn here(path: impl Into<String>) -> Self {
        Self {
            fs: FsSel::This,
            path: path.into(),
        }
    }
}

/// One entry of a boot menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub title: String,
    pub kernel: Location,
    pub initrds: Vec<Location>,
    pub cmdline: String,
}

/// A configuration's menu: its entries in order and the default's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Menu {
    pub entries: Vec<BootEntry>,
    pub default: usize,
}

/// Reading files for the configuration parsers, relative to the file
/// system a configuration was found on. Errors are texts for the user.
pub trait Files {
    fn text(&self, base: usize, at: &Location) -> Result<Option<String>, String>;
    fn list(&self, base: usize, at: &Location) -> Result<Vec<String>, String>;
}

/// The configuration chosen and the entry it boots.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Where the configuration was found: `/boot/grub/grub.cfg on partition 1`.
    pub config: String,
    pub menu: Menu,
    /// The default entry's files: (file system index, path).
    pub kernel: (usize, String),
    pub initrds: Vec<(usize, String)>,
    /// The command line vmpod passes (a console added if none is named).
    pub cmdline: String,
}

impl Chosen {
    pub fn entry(&self) -> &BootEntry {
        &self.menu.entries[self.menu.default]
    }
}

impl Disk {
    fn where_is(&self, index: usize) -> String {
        match self.found[index].partition {
            Some(number) => format!("partition {number}"),
            None => "the disk".to_owned(),
        }
    }

    /// The index of the file system `selector` names, seen from `base`.
    pub(super) fn resolve(&self, base: usize, selector: &FsSel) -> Option<usize> {
        let open = |index: &usize| self.mounted[*index].is_some();
        let mut indexes = 0..self.found.len();
        match selector {
            FsSel::This => Some(base),
            FsSel::Uuid(uuid) => {
                indexes.find(|i| open(i) && self.found[*i].uuid.eq_ignore_ascii_case(uuid))
            }
            FsSel::Label(label) => indexes.find(|i| open(i) && self.found[*i].label == *label),
            FsSel::Partition(number) => indexes.find(|i| {
                self.found[*i].partition == Some(*number)
                    || (self.found[*i].partition.is_none() && *number == 0)
            }),
            FsSel::File(path) => indexes.find(|i| {
                self.mounted[*i]
                    .as_ref()
                    .is_some_and(|fs| matches!(fs.file_size(path), Ok(Some(_))))
            }),
        }
    }

    fn mounted_at(&self, index: usize) -> Option<&Mounted> {
        self.mounted.get(index).and_then(Option::as_ref)
    }
}

impl Files for Disk {
    fn text(&self, base: usize, at: &Location) -> Result<Option<String>, String> {
        let Some(index) = self.resolve(base, &at.fs) else {
            return Ok(None);
        };
        let Some(fs) = self.mounted_at(index) else {
            return Ok(None);
        };
        match fs.read(&at.path, MAX_CONFIG) {
            Ok(Some(bytes)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Ok(None) => Ok(None),
            Err(error) => Err(format!("{} on {}", error, self.where_is(index))),
        }
    }

    fn list(&self, base: usize, at: &Location) -> Result<Vec<String>, String> {
        let Some(fs) = self
            .resolve(base, &at.fs)
            .and_then(|index| self.mounted_at(index))
        else {
            return Ok(Vec::new());
        };
        fs.list(&at.path).map_err(|error| error.to_string())
    }
}

const EXTLINUX: [&str; 6] = [
    "/boot/extlinux/extlinux.conf",
    "/extlinux/extlinux.conf",
    "/boot/extlinux.conf",
    "/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux/syslinux.cfg",
];
const GRUB_CFG: [&str; 4] = [
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub/grub.cfg",
    "/grub2/grub.cfg",
];
const MENU_LST: [&str; 3] = [
    "/boot/grub/menu.lst",
    "/grub/menu.lst",
    "/boot/grub/grub.conf",
];

/// Finds the boot configuration and its default entry.
pub fn choose(disk: &Disk) -> Result<Chosen, DiskBootError> {
    let config_error = |config: &str, problem: String| DiskBootError::Config {
        disk: disk.name.clone(),
        config: config.to_owned(),
        problem,
    };
    let readable: Vec<usize> = (0..disk.found.len())
        .filter(|&i| disk.mounted[i].is_some())
        .collect();
    for &index in &readable {
        for dir in ["/loader/entries", "/boot/loader/entries"] {
            let names = disk
                .list(index, &Location::here(dir))
                .map_err(|e| config_error(dir, e))?;
            if names.iter().any(|name| name.ends_with(".conf")) {
                let config = format!("BLS entries in {dir} on {}", disk.where_is(index));
                let menu =
                    bls::menu(disk, index, dir, &names).map_err(|e| config_error(&config, e))?;
                return finish(disk, index, config, menu);
            }
        }
    }
    for &index in &readable {
        for path in EXTLINUX {
            if let Some(text) = disk
                .text(index, &Location::here(path))
                .map_err(|e| config_error(path, e))?
            {
                let config = format!("{path} on {}", disk.where_is(index));
                let menu = extlinux::menu(disk, index, path, &text)
                    .map_err(|e| config_error(&config, e))?;
                return finish(disk, index, config, menu);
            }
        }
    }
    for &index in &readable {
        for path in grub_configs(disk, index) {
            if let Some(text) = disk
                .text(index, &Location::here(path.as_str()))
                .map_err(|e| config_error(&path, e))?
            {
                let config = format!("{path} on {}", disk.where_is(index));
                let outcome =
                    grub::menu(disk, index, &path, &text).map_err(|e| config_error(&config, e))?;
                if let Some((menu, base)) = outcome {
                    return finish(disk, base, config, menu);
                }
            }
        }
    }
    for &index in &readable {
        for path in MENU_LST {
            if let Some(text) = disk
                .text(index, &Location::here(path))
                .map_err(|e| config_error(path, e))?
            {
                let config = format!("{path} on {}", disk.where_is(index));
                let menu =
                    extlinux::grub_legacy_menu(&text).map_err(|e| config_error(&config, e))?;
                return finish(disk, index, config, menu);
            }
        }
    }
    for &index in &readable {
        if let Some(menu) = kernel_links(disk, index)? {
            let config = format!("the /vmlinuz link on {}", disk.where_is(index));
            return finish(disk, index, config, menu);
        }
    }
    Err(DiskBootError::NothingToBoot {
        disk: disk.name.clone(),
        reasons: nothing_found(disk),
    })
}

/// grub.cfg's usual places, then those on an EFI system partition.
fn grub_configs(disk: &Disk, index: usize) -> Vec<String> {
    let mut paths: Vec<String> = GRUB_CFG.iter().map(|p| (*p).to_owned()).collect();
    for vendor in disk
        .list(index, &Location::here("/EFI"))
        .unwrap_or_default()
    {
        if vendor != "BOOT" && vendor != "Linux" {
            paths.push(format!("/EFI/{vendor}/grub.cfg"));
        }
    }
    paths
}

/// Debian's and Ubuntu's `/vmlinuz` + `/initrd.img` links (or the same in
/// /boot), booted with this file system as the root.
fn kernel_links(disk: &Disk, index: usize) -> Result<Option<Menu>, DiskBootError> {
    let Some(fs) = disk.mounted_at(index) else {
        return Ok(None);
    };
    for dir in ["", "/boot"] {
        let kernel = format!("{dir}/vmlinuz");
        match fs.file_size(&kernel) {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(source) => {
                return Err(DiskBootError::File {
                    disk: disk.name.clone(),
                    what: format!("the kernel link {kernel} on {}", disk.where_is(index)),
                    source,
                })
            }
        }
        let initrds = [format!("{dir}/initrd.img"), format!("{dir}/initrd")]
            .into_iter()
            .find(|path| matches!(fs.file_size(path), Ok(Some(_))))
            .map(Location::here)
            .into_iter()
            .collect();
        let uuid = &disk.found[index].uuid;
        return Ok(Some(Menu {
            entries: vec![BootEntry {
                title: "Linux (from the kernel links)".to_owned(),
                kernel: Location::here(kernel),
                initrds,
                cmdline: format!("root=UUID={uuid} ro"),
            }],
            default: 0,
        }));
    }
    Ok(None)
}

/// Why nothing could be booted: what each partition held.
fn nothing_found(disk: &Disk) -> Vec<String> {
    let mut reasons = Vec::new();
    for (index, found) in disk.found.iter().enumerate() {
        let at = disk.where_is(index);
        let reason = match (found.kind, &found.problem) {
            (_, Some(problem)) => format!("{at} ({}) cannot be read (damaged, or using features vmpod's reader lacks): {problem}", found.kind.name()),
            (FsKind::Xfs | FsKind::Btrfs, _) => format!(
                "{at} holds {}, which vmpod cannot read yet (/boot must be on ext2/3/4 or FAT)",
                found.kind.name()
            ),
            (FsKind::Lvm, _) => format!("{at} is an LVM physical volume, which vmpod cannot read"),
            (FsKind::Luks, _) => format!("{at} is encrypted (LUKS), which vmpod cannot read"),
            (FsKind::Ext | FsKind::Fat, None) => {
                let ukis: Vec<String> = disk
                    .list(index, &Location::here("/EFI/Linux"))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|name| name.to_ascii_lowercase().ends_with(".efi"))
                    .collect();
                if ukis.is_empty() {
                    format!(
                        "{at} ({}) has no boot configuration and no /vmlinuz",
                        found.kind.name()
                    )
                } else {
                    format!(
                        "{at} holds only unified kernel images (/EFI/Linux/{}), which vmpod cannot boot yet",
                        ukis.join(", /EFI/Linux/")
                    )
                }
            }
            (kind, None) => format!("{at}: {}", kind.name()),
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        reasons.push("it has no partitions".to_owned());
    }
    reasons
}

/// Resolves the default entry's files, checks them and the kernel's
/// build configuration, and settles the command line.
fn finish(disk: &Disk, base: usize, config: String, menu: Menu) -> Result<Chosen, DiskBootError> {
    let entry = menu
        .entries
        .get(menu.default)
        .ok_or_else(|| DiskBootError::Config {
            disk: disk.name.clone(),
            config: config.clone(),
            problem: "it has no boot entries".to_owned(),
        })?;
    let locate = |location: &Location| -> Result<(usize, String), DiskBootError> {
        let missing = || DiskBootError::Missing {
            disk: disk.name.clone(),
            entry: format!("entry {:?} of {config}", entry.title),
            path: location.path.clone(),
        };
        let index = disk.resolve(base, &location.fs).ok_or_else(missing)?;
        let fs = disk.mounted_at(index).ok_or_else(missing)?;
        match fs.file_size(&location.path) {
            Ok(Some(_)) => Ok((index, location.path.clone())),
            Ok(None) => Err(missing()),
            Err(source) => Err(DiskBootError::File {
                disk: disk.name.clone(),
                what: format!("the kernel of entry {:?}", entry.title),
                source,
            }),
        }
    };
    let kernel = locate(&entry.kernel)?;
    let initrds = entry
        .initrds
        .iter()
        .map(locate)
        .collect::<Result<Vec<_>, _>>()?;
    check_virtio_mmio(disk, &kernel)?;
    let mut cmdline = entry
        .cmdline
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if !cmdline.split(' ').any(|arg| arg.starts_with("console=")) {
        cmdline.push_str(if cmdline.is_empty() {
            "console=ttyS0"
        } else {
            " console=ttyS0"
        });
    }
    Ok(Chosen {
        config,
        menu,
        kernel,
        initrds,
        cmdline,
    })
}

/// The kernel version a kernel's file name carries (`vmlinuz-6.1.0-18-cloud-amd64`).
fn kernel_version(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    ["vmlinuz-", "vmlinux-", "kernel-", "bzImage-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .filter(|version| !version.is_empty())
}

/// Refuses a kernel whose build configuration (when the disk has it)
/// leaves out virtio-mmio, the only transport vmpod offers.
fn check_virtio_mmio(disk: &Disk, kernel: &(usize, String)) -> Result<(), DiskBootError> {
    let Some(version) = kernel_version(&kernel.1) else {
        return Ok(());
    };
    let dir = kernel.1.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut candidates = vec![(kernel.0, format!("{dir}/config-{version}"))];
    for index in 0..disk.found.len() {
        for path in [
            format!("/boot/config-{version}"),
            format!("/lib/modules/{version}/config"),
            format!("/usr/lib/modules/{version}/config"),
        ] {
            candidates.push((index, path));
        }
    }
    for (index, path) in candidates {
        let Some(fs) = disk.mounted_at(index) else {
            continue;
        };
        let Ok(Some(bytes)) = fs.read(&path, 4 * MAX_CONFIG) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let built = text
            .lines()
            .any(|line| line == "CONFIG_VIRTIO_MMIO=y" || line == "CONFIG_VIRTIO_MMIO=m");
        if built {
            return Ok(());
        }
        return Err(DiskBootError::NoVirtioMmio {
            disk: disk.name.clone(),
            version: version.to_owned(),
            config: format!("{path} on {}", disk.where_is(index)),
        });
    }
    Ok(())
}

/// Copies the chosen kernel and initrds into the sinks.
pub fn stage(
    disk: &Disk,
    chosen: &Chosen,
    sinks: super::Sinks,
) -> Result<super::Staged, DiskBootError> {
    let copy =
        |(index, path): &(usize, String), limit: u64, sink: &mut dyn std::io::Write, what: &str| {
            let fs = disk
                .mounted_at(*index)
                .ok_or_else(|| DiskBootError::Missing {
                    disk: disk.name.clone(),
                    entry: chosen.config.clone(),
                    path: path.clone(),
                })?;
            fs.copy(path, limit, sink)
                .map_err(|source| DiskBootError::File {
                    disk: disk.name.clone(),
                    what: format!("the {what} {path} on {}", disk.where_is(*index)),
                    source,
                })?
                .ok_or_else(|| DiskBootError::Missing {
                    disk: disk.name.clone(),
                    entry: chosen.config.clone(),
                    path: path.clone(),
                })
        };
    copy(&chosen.kernel, MAX_KERNEL, sinks.kernel, "kernel")?;
    let initrd_limit = sinks.initrd_limit.min(MAX_INITRD);
    let mut initrd_bytes = 0;
    for file in &chosen.initrds {
        initrd_bytes += copy(file, initrd_limit - initrd_bytes, sinks.initrd, "initrd")?;
    }
    Ok(super::Staged {
        cmdline: chosen.cmdline.clone(),
        initrd_bytes,
        description: format!(
            "{} from {} ({}: {:?})",
            chosen.kernel.1,
            disk.where_is(chosen.kernel.0),
            chosen.config,
            chosen.entry().title
        ),
    })
}
