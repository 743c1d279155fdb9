//! Disk images against QEMU's own tools: images made by `qemu-img` and
//! `qemu-io` (backing chains, compressed clusters, loops) read as QEMU
//! reads them; what vmpod writes into qcow2 passes `qemu-img check` and
//! reads back in `qemu-io`; a containerDisk's base stays byte-for-byte
//! unchanged under an overlay.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{not_here, Scratch};
use vmpod::images::{self, DiskImage, Format, ImageError};

const MIB: u64 = 1 << 20;

/// Runs a QEMU tool; `None` (after saying so) where it is not installed.
fn qemu(test: &str, tool: &str, args: &[&str]) -> Option<String> {
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(error) => {
            not_here(
                test,
                &format!("{tool} cannot run ({error}); install qemu-utils"),
            );
            return None;
        }
    };
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 scratch path")
}

fn read(image: &mut dyn DiskImage, offset: u64, len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    image.read_at(&mut buffer, offset).expect("read");
    buffer
}

fn raw_with_pattern(path: &Path, size: u64) -> Vec<u8> {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(path, &bytes).expect("raw image");
    bytes
}

/// A 2 MiB patterned raw image at `raw`, and `qemu-img convert -c` of it
/// at `compressed`; the pattern, or `None` where qemu-img is missing.
fn compressed_image(test: &str, raw: &Path, compressed: &Path) -> Option<Vec<u8>> {
    let pattern = raw_with_pattern(raw, 2 * MIB);
    let args = [
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        text(raw),
        text(compressed),
    ];
    qemu(test, "qemu-img", &args).map(|_| pattern)
}

#[test]
fn a_raw_disk_reads_writes_zeroes_and_discards() {
    let scratch = Scratch::new("images-raw");
    let path = scratch.0.join("disk.img");
    raw_with_pattern(&path, 4 * MIB);
    let mut disk = images::open(&path, true).expect("open");
    assert_eq!((disk.size(), disk.format()), (4 * MIB, Format::Raw));
    disk.write_at(&[0xaa; 4096], MIB).expect("write");
    assert_eq!(read(&mut *disk, MIB, 4096), vec![0xaa; 4096]);
    disk.write_zeroes(MIB, 8192).expect("write zeroes");
    assert_eq!(read(&mut *disk, MIB, 8192), vec![0; 8192]);
    disk.discard(2 * MIB, MIB).expect("discard");
    disk.flush().expect("flush");
    drop(disk);
    let on_disk = std::fs::read(&path).expect("file");
    assert_eq!(
        &on_disk[MIB as usize..MIB as usize + 8192],
        &[0u8; 8192][..]
    );
}

#[test]
fn a_file_named_qcow2_that_is_not_one_is_refused_by_name() {
    let scratch = Scratch::new("images-not-qcow2");
    let path = scratch.0.join("root.qcow2");
    raw_with_pattern(&path, MIB);
    let error = images::open(&path, false).expect_err("not qcow2");
    assert!(matches!(error, ImageError::NotQcow2 { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("root.qcow2") && message.contains("is not one"),
        "{message}"
    );
}

#[test]
fn a_qcow2_header_inside_a_raw_named_disk_is_not_trusted() {
    let test = "a_qcow2_header_inside_a_raw_named_disk_is_not_trusted";
    let scratch = Scratch::new("images-raw-named");
    let path = scratch.0.join("disk.img");
    let Some(_) = qemu(
        test,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", text(&path), "64M"],
    ) else {
        return;
    };
    let file_size = std::fs::metadata(&path).expect("meta").len();
    let disk = images::open(&path, true).expect("open");
    // Served as the raw bytes it holds, not as the 64 MiB it announces.
    assert_eq!((disk.format(), disk.size()), (Format::Raw, file_size));
}

#[test]
fn a_backing_chain_made_by_qemu_reads_as_qemu_reads_it() {
    let test = "a_backing_chain_made_by_qemu_reads_as_qemu_reads_it";
    let scratch = Scratch::new("images-chain");
    let base = scratch.0.join("base.raw");
    let middle = scratch.0.join("middle.qcow2");
    let top = scratch.0.join("top.qcow2");
    let pattern = raw_with_pattern(&base, 4 * MIB);
    let steps: [&[&str]; 4] = [
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            text(&middle),
        ],
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "middle.qcow2",
            "-F",
            "qcow2",
            text(&top),
        ],
        &["-c", "write -P 0x11 1M 64k", text(&middle)],
        &["-c", "write -P 0x22 2M 4k", text(&top)],
    ];
    for (index, args) in steps.iter().enumerate() {
        let tool = if index < 2 { "qemu-img" } else { "qemu-io" };
        if qemu(test, tool, args).is_none() {
            return;
        }
    }
    let mut disk = images::open(&top, false).expect("open the chain");
    assert_eq!((disk.size(), disk.format()), (4 * MIB, Format::Qcow2));
    assert_eq!(read(&mut *disk, 0, 4096), pattern[..4096]);
    assert_eq!(read(&mut *disk, MIB, 65536), vec![0x11; 65536]);
    assert_eq!(read(&mut *disk, 2 * MIB, 4096), vec![0x22; 4096]);
    let tail = (3 * MIB) as usize;
    assert_eq!(read(&mut *disk, 3 * MIB, 4096), pattern[tail..tail + 4096]);
}

#[test]
fn compressed_clusters_read_back_as_the_original() {
    let test = "compressed_clusters_read_back_as_the_original";
    let scratch = Scratch::new("images-compressed");
    let raw = scratch.0.join("plain.raw");
    let compressed = scratch.0.join("packed.qcow2");
    let Some(pattern) = compressed_image(test, &raw, &compressed) else {
        return;
    };
    let packed = std::fs::metadata(&compressed).expect("meta").len();
    assert!(packed < 2 * MIB, "qemu-img did compress: {packed} bytes");
    let mut disk = images::open(&compressed, false).expect("open");
    assert_eq!(read(&mut *disk, 0, (2 * MIB) as usize), pattern);
}

#[test]
fn what_vmpod_writes_into_qcow2_passes_qemu_img_check() {
    let test = "what_vmpod_writes_into_qcow2_passes_qemu_img_check";
    let scratch = Scratch::new("images-write");
    let path = scratch.0.join("data.qcow2");
    if qemu(
        test,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", text(&path), "16M"],
    )
    .is_none()
    {
        return;
    }
    let mut disk = images::open(&path, true).expect("open");
    disk.write_at(&[0x5a; 65536 * 3], 5 * MIB).expect("write");
    disk.write_at(&[0x33; 512], 12 * MIB + 512)
        .expect("small write");
    disk.write_zeroes(5 * MIB, 65536).expect("zeroes");
    disk.discard(5 * MIB + 65536, 65536).expect("discard");
    disk.flush().expect("flush");
    drop(disk);
    let Some(_) = qemu(test, "qemu-img", &["check", "-q", text(&path)]) else {
        return;
    };
    for (what, check) in [
        ("zeroed", "read -P 0 5M 64k"),
        ("kept", "read -P 0x5a 5248k 64k"),
        ("small", "read -P 0x33 12583424 512"),
    ] {
        let out = qemu(test, "qemu-io", &["-c", check, text(&path)]).expect("qemu-io");
        assert!(
            !out.contains("Pattern verification failed"),
            "{what}: {out}"
        );
    }
}

#[test]
fn an_overlay_keeps_the_base_byte_for_byte_unchanged() {
    let scratch = Scratch::new("images-overlay");
    let base = scratch.0.join("disk.raw");
    let overlay = scratch.0.join("scratch/root.overlay.qcow2");
    let pattern = raw_with_pattern(&base, 4 * MIB);
    let mut disk = images::create_overlay(&base, &overlay).expect("overlay");
    assert_eq!(disk.size(), 4 * MIB);
    disk.write_at(&[0xee; 4096], MIB + 512).expect("write");
    disk.write_zeroes(2 * MIB, 65536).expect("zeroes");
    disk.flush().expect("flush");
    assert_eq!(read(&mut *disk, MIB + 512, 4096), vec![0xee; 4096]);
    assert_eq!(read(&mut *disk, 2 * MIB, 65536), vec![0; 65536]);
    assert_eq!(read(&mut *disk, 0, 4096), pattern[..4096]);
    // The rest of the written cluster is the base's.
    assert_eq!(
        read(&mut *disk, MIB, 512),
        pattern[MIB as usize..MIB as usize + 512]
    );
    drop(disk);
    assert!(
        std::fs::read(&base).expect("base") == pattern,
        "the base changed"
    );
    // A new overlay starts from the base again, as a new pod would.
    let mut again = images::create_overlay(&base, &overlay).expect("overlay again");
    assert_eq!(
        read(&mut *again, MIB + 512, 4096),
        pattern[(MIB + 512) as usize..][..4096]
    );
}

#[test]
fn an_overlay_over_a_qcow2_base_reads_the_base_and_leaves_it_alone() {
    let test = "an_overlay_over_a_qcow2_base_reads_the_base_and_leaves_it_alone";
    let scratch = Scratch::new("images-overlay-qcow2");
    let raw = scratch.0.join("plain.raw");
    let base = scratch.0.join("disk.qcow2");
    let Some(pattern) = compressed_image(test, &raw, &base) else {
        return;
    };
    let before = std::fs::read(&base).expect("base");
    let mut disk = images::create_overlay(&base, &scratch.0.join("o.qcow2")).expect("overlay");
    assert_eq!(read(&mut *disk, 0, (2 * MIB) as usize), pattern);
    disk.write_at(&[1; 65536], 0).expect("write");
    disk.flush().expect("flush");
    drop(disk);
    assert!(
        std::fs::read(&base).expect("base") == before,
        "the base changed"
    );
}

#[test]
fn a_backing_chain_that_loops_is_a_clear_error() {
    let test = "a_backing_chain_that_loops_is_a_clear_error";
    let scratch = Scratch::new("images-loop");
    let a = scratch.0.join("a.qcow2");
    let b = scratch.0.join("b.qcow2");
    let steps: [&[&str]; 3] = [
        &["create", "-q", "-f", "qcow2", text(&b), "1M"],
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            text(&a),
        ],
        // Unsafe rebase: only the header changes, so b now names a.
        &["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", text(&b)],
    ];
    for args in steps {
        if qemu(test, "qemu-img", args).is_none() {
            return;
        }
    }
    let error = images::open(&a, false).expect_err("a loop");
    let message = error.to_string();
    assert!(
        message.contains("a.qcow2") && message.contains("loops"),
        "{message}"
    );
    // Also for a containerDisk's base.
    let error = images::create_overlay(&a, &scratch.0.join("o.qcow2")).expect_err("a loop");
    assert!(error.to_string().contains("loops"), "{error}");
}

#[test]
fn a_corrupt_qcow2_header_is_an_error_not_a_panic() {
    let scratch = Scratch::new("images-corrupt");
    let path: PathBuf = scratch.0.join("bad.qcow2");
    let mut header = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    header.extend(std::iter::repeat_n(0xff, 1024));
    std::fs::write(&path, &header).expect("write");
    let error = images::open(&path, false).expect_err("corrupt");
    assert!(matches!(error, ImageError::Qcow2 { .. }), "{error}");
    assert!(error.to_string().contains("bad.qcow2"), "{error}");
}

#[test]
fn a_full_file_system_is_an_io_error_at_run_time_and_a_clear_one_for_an_overlay() {
    let test = "a_full_file_system_is_an_io_error_at_run_time_and_a_clear_one_for_an_overlay";
    let scratch = Scratch::new("images-full");
    let full = scratch.0.join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    // A 256 KiB file system (root only), then a disk bigger than it.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&full)
        .status();
    if !mounted.is_ok_and(|status| status.success()) {
        return not_here(test, "cannot mount a small tmpfs (needs root)");
    }
    let unmount = || {
        let status = Command::new("umount").arg(&full).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "umount {}",
            full.display()
        );
    };
    let disk = full.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|file| file.set_len(4 * MIB))
        .expect("a sparse disk fits");
    let mut image = images::open(&disk, true).expect("open");
    let block = vec![0x77u8; 65536];
    let failed = (0..64).find_map(|index| image.write_at(&block, index * 65536).err());
    let base = scratch.0.join("base.raw");
    raw_with_pattern(&base, MIB);
    let overlay = images::create_overlay(&base, &full.join("root.overlay.qcow2"));
    drop(image);
    unmount();
    let error = failed.expect("a 4 MiB disk on a 256 KiB file system fills it");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    let message = overlay.expect_err("no room for the overlay").to_string();
    assert!(
        message.contains("root.overlay.qcow2") && message.contains("has room"),
        "{message}"
    );
}
