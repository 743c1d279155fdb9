//! Disk images for disk-boot tests: ext4 file systems made by
//! `mkfs.ext4 -d`, FAT ones made with the fatfs crate, and GPT or MBR
//! tables made by `sfdisk`, all in a test's scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{not_here, Scratch};

pub const UUID: &str = "6d3c1f0e-9a8b-4c7d-8e6f-5a4b3c2d1e0f";

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

pub fn tools_here(test: &str) -> bool {
    let missing: Vec<&str> = ["mkfs.ext4", "sfdisk", "qemu-img"]
        .into_iter()
        .filter(|tool| !have(tool))
        .collect();
    if missing.is_empty() {
        return true;
    }
    not_here(test, &format!("{} not installed", missing.join(", ")));
    false
}

pub fn run(command: &mut Command) {
    let output = command.output().expect("tool runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Files to put in a file system: (path, contents) or (path, "->target").
pub fn populate(root: &Path, files: &[(&str, &[u8])]) {
    for (path, contents) in files {
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
        match contents.strip_prefix(b"->") {
            Some(target) => {
                std::os::unix::fs::symlink(std::str::from_utf8(target).expect("utf-8"), &at)
                    .expect("symlink")
            }
            None => std::fs::write(&at, contents).expect("write"),
        }
    }
}

/// An ext4 file system image holding `files`.
pub fn ext4(scratch: &Scratch, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    ext4_with_uuid(scratch, name, UUID, files)
}

/// An ext4 file system image with the given UUID holding `files`.
pub fn ext4_with_uuid(
    scratch: &Scratch,
    name: &str,
    uuid: &str,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let root = scratch.0.join(format!("{name}.root"));
    populate(&root, files);
    let image = scratch.0.join(format!("{name}.ext4"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-L", "root", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("32M"));
    image
}

/// A disk with a `label` (gpt or dos) table holding the given partition
/// images, in order; `types` are sfdisk type names or GUIDs.
pub fn disk(scratch: &Scratch, name: &str, label: &str, parts: &[(&str, &Path)]) -> PathBuf {
    let path = scratch.0.join(name);
    let mut script = format!("label: {label}\n");
    let mut start = 2048u64;
    let mut placed = Vec::new();
    for (kind, image) in parts {
        let sectors = std::fs::metadata(image).expect("image").len().div_ceil(512);
        script.push_str(&format!("start={start}, size={sectors}, type={kind}\n"));
        placed.push((start, *image));
        start += sectors.div_ceil(2048) * 2048;
    }
    let file = std::fs::File::create(&path).expect("disk");
    file.set_len((start + 2048) * 512).expect("size");
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(&path)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes())
        .expect("script");
    drop(child.stdin.take());
    assert!(child.wait().expect("sfdisk ends").success(), "{script}");
    for (start, image) in placed {
        let bytes = std::fs::read(image).expect("image");
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, start * 512).expect("copy");
    }
    path
}

pub fn grub_cfg(default: u32, entries: &[(&str, &str)]) -> String {
    let mut text =
        format!("set default=\"{default}\"\nif [ -s $prefix/grubenv ]; then\n  load_env\nfi\n");
    for (title, kernel) in entries {
        text.push_str(&format!(
            "menuentry '{title}' --class debian $menuentry_id_option 'id-{title}' {{\n\tinsmod ext2\n\tsearch --no-floppy --fs-uuid --set=root {UUID}\n\tlinux\t{kernel} root=UUID={UUID} ro console=ttyS0 entry={title}\n\tinitrd\t/boot/initrd.img\n}}\n"
        ));
    }
    text
}

/// A FAT file system image (made with the fatfs crate) holding `files`.
pub fn fat(scratch: &Scratch, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = scratch.0.join(format!("{name}.fat"));
    let mut image = std::io::Cursor::new(vec![0u8; 32 << 20]);
    fatfs::format_volume(
        &mut image,
        fatfs::FormatVolumeOptions::new().volume_label(*b"EFI        "),
    )
    .expect("format");
    {
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).expect("open");
        for (file, contents) in files {
            let relative = file.trim_start_matches('/');
            let mut dir = fs.root_dir();
            let parts: Vec<&str> = relative.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                dir = dir.create_dir(part).expect("mkdir");
            }
            let mut created = dir.create_file(parts[parts.len() - 1]).expect("create");
            std::io::Write::write_all(&mut created, contents).expect("write");
        }
    }
    std::fs::write(&path, image.into_inner()).expect("image");
    path
}
