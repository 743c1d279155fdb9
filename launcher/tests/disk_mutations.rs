//! Seeded mutations of real partition tables (sfdisk's GPT and MBR) and
//! real file systems (ext4, FAT) read by vmpod's disk-boot reader: never a
//! panic or a hang, whatever the bytes say.

mod common;

use common::disk_images::{disk, ext4, fat, grub_cfg, tools_here};
use common::Scratch;

/// A disk in memory, for the partition-table reader.
struct Bytes<'a>(&'a [u8]);

impl vmpod::diskboot::DiskRead for Bytes<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_from(self.0, buf, offset)
    }
}

fn read_from(bytes: &[u8], buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let start = usize::try_from(offset).map_err(std::io::Error::other)?;
    let source = start
        .checked_add(buf.len())
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    buf.copy_from_slice(source);
    Ok(())
}

/// Deterministic noise (xorshift), so a failure reproduces.
fn noise(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Changes a few bytes of `bytes` within `range`; returns what to restore.
fn mutate(
    bytes: &mut [u8],
    range: std::ops::Range<usize>,
    most: u64,
    state: &mut u64,
) -> Vec<(usize, u8)> {
    let mut changed = Vec::new();
    for _ in 0..1 + noise(state) % most {
        let at = range.start + (noise(state) % range.len() as u64) as usize;
        changed.push((at, bytes[at]));
        bytes[at] = noise(state) as u8;
    }
    changed
}

fn restore(bytes: &mut [u8], changed: Vec<(usize, u8)>) {
    for (at, old) in changed.into_iter().rev() {
        bytes[at] = old;
    }
}

#[test]
fn mutated_partition_tables_and_file_systems_never_panic() {
    if !tools_here("mutations") {
        return;
    }
    let scratch = Scratch::new("mutations");
    let root = ext4(
        &scratch,
        "root",
        &[
            (
                "/boot/grub/grub.cfg",
                grub_cfg(0, &[("a", "/boot/vmlinuz-1")]).as_bytes(),
            ),
            ("/boot/vmlinuz-1", b"k"),
            ("/boot/initrd.img", b"i"),
        ],
    );
    let esp = fat(
        &scratch,
        "esp",
        &[(
            "/EFI/debian/grub.cfg",
            b"configfile (hd0,gpt2)/boot/grub/grub.cfg\n",
        )],
    );
    let mut gpt = std::fs::read(disk(
        &scratch,
        "gpt.raw",
        "gpt",
        &[("uefi", &esp), ("linux", &root)],
    ))
    .expect("gpt");
    let mut mbr = std::fs::read(disk(
        &scratch,
        "mbr.raw",
        "dos",
        &[("ef", &esp), ("83", &root)],
    ))
    .expect("mbr");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    // Partition tables: the first 34 sectors, mutated.
    for bytes in [&mut gpt, &mut mbr] {
        for _ in 0..3000 {
            let changed = mutate(bytes, 0..34 * 512, 6, &mut state);
            let _ = vmpod::diskboot::partitions::read(&mut Bytes(bytes));
            restore(bytes, changed);
        }
    }
    // File systems: their first 128 KiB (superblocks, group descriptors,
    // FAT tables, the root directory), mutated, read through inspect.
    let shared = std::sync::Arc::new(std::sync::Mutex::new(gpt));
    for start in [1usize << 20, 34 << 20] {
        for _ in 0..300 {
            let changed = {
                let mut bytes = shared.lock().expect("bytes");
                mutate(&mut bytes, start..start + (128 << 10), 16, &mut state)
            };
            let image = vmpod::images::Shared::new(Box::new(InMemory(shared.clone())));
            let _ = vmpod::diskboot::inspect_disk(image, "fuzz").outcome;
            restore(&mut shared.lock().expect("bytes"), changed);
        }
    }
}

/// An in-memory disk image the test can change between reads.
#[derive(Debug)]
struct InMemory(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl vmpod::images::DiskImage for InMemory {
    fn size(&self) -> u64 {
        self.0.lock().expect("bytes").len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_from(&self.0.lock().expect("bytes"), buf, offset)
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, _: u64, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn format(&self) -> vmpod::images::Format {
        vmpod::images::Format::Raw
    }
}
