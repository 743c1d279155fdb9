//! `vmpod inspect-disk IMAGE`: what vmpod finds on a disk image without
//! booting it — the partitions, their file systems, the boot
//! configuration's entries, and the kernel, initrd and command line vmpod
//! would boot. Prints for people; main thread.

use std::path::Path;
use std::process::ExitCode;

use vmpod::diskboot::{self, FsSel, Location};
use vmpod::images::{self, Shared};
use vmpod::spec::quantity::format_bytes;

use crate::report;

/// Exit status when the image opens but has nothing vmpod can boot.
const NOT_BOOTABLE: u8 = 2;

pub fn inspect_disk(path: &Path) -> ExitCode {
    let (image, format) = match images::open_base(path) {
        Ok(opened) => opened,
        Err(error) => {
            report(&error);
            return ExitCode::FAILURE;
        }
    };
    let size = image.size();
    let name = path.display().to_string();
    let inspection = diskboot::inspect_disk(Shared::new(image), &name);
    println!(
        "{name}: {} image, {} ({size} bytes), partition table: {}",
        format.name(),
        format_bytes(size),
        match inspection.table {
            diskboot::partitions::Table::Gpt => "GPT",
            diskboot::partitions::Table::Mbr => "MBR",
            diskboot::partitions::Table::None => "none",
        }
    );
    for (index, found) in inspection.filesystems.iter().enumerate() {
        let heading = match found.partition {
            Some(number) => {
                let part = inspection.partitions.iter().find(|p| p.number == number);
                let kind = part.map_or("", |p| diskboot::partitions::describe_kind(&p.kind));
                let size = part.map_or(String::new(), |p| format_bytes(p.size));
                let named = part
                    .filter(|p| !p.name.is_empty())
                    .map_or(String::new(), |p| format!(" {:?}", p.name));
                format!(
                    "partition {number}{named}: {size}{}",
                    if kind.is_empty() {
                        String::new()
                    } else {
                        format!(", {kind}")
                    }
                )
            }
            None => "whole disk".to_owned(),
        };
        let mut detail = found.kind.name().to_owned();
        if !found.uuid.is_empty() {
            detail.push_str(&format!(", UUID {}", found.uuid));
        }
        if !found.label.is_empty() {
            detail.push_str(&format!(", label {:?}", found.label));
        }
        if let Some(problem) = &found.problem {
            detail.push_str(&format!(", unreadable: {problem}"));
        }
        println!("  [{index}] {heading}: {detail}");
    }
    match inspection.outcome {
        Ok(chosen) => {
            println!("boot configuration: {}", chosen.config);
            for (index, entry) in chosen.menu.entries.iter().enumerate() {
                let mark = if index == chosen.menu.default {
                    "*"
                } else {
                    " "
                };
                println!("  {mark} {index}: {}", entry.title);
                println!("        kernel {}", shown(&entry.kernel));
                for initrd in &entry.initrds {
                    println!("        initrd {}", shown(initrd));
                }
                println!("        options {}", entry.cmdline);
            }
            let on = |index: usize| match inspection.filesystems[index].partition {
                Some(number) => format!("partition {number}"),
                None => "the disk".to_owned(),
            };
            println!("vmpod boots:");
            println!("  kernel  {} on {}", chosen.kernel.1, on(chosen.kernel.0));
            for (fs, initrd) in &chosen.initrds {
                println!("  initrd  {initrd} on {}", on(*fs));
            }
            println!("  cmdline {}", chosen.cmdline);
            ExitCode::SUCCESS
        }
        Err(error) => {
            report(&error);
            ExitCode::from(NOT_BOOTABLE)
        }
    }
}

fn shown(location: &Location) -> String {
    match &location.fs {
        FsSel::This => location.path.clone(),
        FsSel::Uuid(uuid) => format!("{} (file system UUID {uuid})", location.path),
        FsSel::Label(label) => format!("{} (file system label {label})", location.path),
        FsSel::Partition(number) => format!("{} (partition {number})", location.path),
        FsSel::File(file) => format!("{} (the file system holding {file})", location.path),
    }
}
