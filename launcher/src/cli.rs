//! The CLI's definition commands: `validate`, `render`, `inspect-disk`
//! (what vmpod would boot from a disk image), and finding the one VM
//! `launch` runs. Prints for people (stdout for results, stderr for
//! problems); all parsing is `vmpod::spec`'s. Main thread, before any other starts.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use vmpod::diskboot::{self, FsSel, Location};
use vmpod::images::{self, Shared};
use vmpod::spec::config::{Boot, VmConfig};
use vmpod::spec::quantity::format_bytes;
use vmpod::spec::{self, Definition, Document, Ignored, Valid};

use crate::{report, Format};

/// Exit status for a definition that cannot be used.
const DEFINITION_ERROR: u8 = 2;

pub fn validate(files: &[std::path::PathBuf], quiet: bool) -> ExitCode {
    let mut failed = false;
    let mut definitions_seen = 0;
    for file in files {
        let shown = file.display();
        let documents = match spec::read_file(file) {
            Ok(documents) => documents,
            Err(error) => {
                report(&error);
                failed = true;
                continue;
            }
        };
        for document in documents {
            match document {
                Document::Skipped { origin } => {
                    println!("{shown}: {origin}: skipped (not a VM definition)")
                }
                Document::Vm(Definition {
                    origin,
                    outcome: Ok(valid),
                }) => {
                    definitions_seen += 1;
                    println!("{shown}: {origin}: ok ({})", summary(&valid.config));
                    if let Err(problem) = check_boot_disk(&valid.config) {
                        eprintln!("{shown}: {origin}: {problem}");
                        failed = true;
                    }
                    if !quiet {
                        for ignored in &valid.ignored {
                            println!("  ignored: {}: {}", ignored.path, ignored.reason);
                        }
                    }
                }
                Document::Vm(Definition {
                    origin,
                    outcome: Err(problems),
                }) => {
                    definitions_seen += 1;
                    failed = true;
                    vmpod::logging::report_problems(&format!("{shown}: {origin}"), &problems);
                }
            }
        }
    }
    if definitions_seen == 0 && !failed {
        eprintln!(
            "vmpod: error: no VirtualMachine or VirtualMachineInstance found in the given files"
        );
        failed = true;
    }
    if failed {
        ExitCode::from(DEFINITION_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

/// For a VM that boots its disk's own kernel: what vmpod would boot, when
/// the disk's image is on this machine (in the pod, or given by path).
fn check_boot_disk(config: &VmConfig) -> Result<(), String> {
    let Boot::Disk(boot) = &config.boot else {
        return Ok(());
    };
    let Some(disk) = config.disks.iter().find(|disk| disk.name == boot.disk) else {
        return Ok(());
    };
    match vmpod::vmm::disks::open_for_inspection(disk) {
        None => {
            println!(
                "  boots disk {}: its image is not here, so vmpod reads its boot configuration when the VM starts (vmpod inspect-disk IMAGE shows it beforehand)",
                disk.name
            );
            Ok(())
        }
        Some(Err(error)) => Err(error.to_string()),
        Some(Ok(image)) => {
            let inspection = diskboot::inspect_disk(Shared::new(image), &disk.name);
            let chosen = inspection.outcome.map_err(|error| error.to_string())?;
            println!(
                "  boots disk {}: {} ({}: {:?}), command line: {}",
                disk.name,
                chosen.kernel.1,
                chosen.config,
                chosen.entry().title,
                chosen.cmdline
            );
            Ok(())
        }
    }
}

/// `1 vCPU, 128Mi, 2 disks, 1 NIC`.
fn summary(config: &VmConfig) -> String {
    let plural =
        |count: usize, word: &str| format!("{count} {word}{}", if count == 1 { "" } else { "s" });
    format!(
        "{}, {} memory, {}, {}",
        plural(config.cpu.vcpus() as usize, "vCPU"),
        format_bytes(config.memory_bytes),
        plural(config.disks.len(), "disk"),
        plural(config.nics.len(), "NIC"),
    )
}

/// Finds exactly one valid VM in a file, or explains why not.
pub fn load_one(file: &Path, name: Option<&str>) -> Result<Valid, ExitCode> {
    let documents = spec::read_file(file).map_err(|error| {
        report(&error);
        ExitCode::from(DEFINITION_ERROR)
    })?;
    let mut matching: Vec<Definition> = documents
        .into_iter()
        .filter_map(|document| match document {
            Document::Vm(definition) => Some(definition),
            Document::Skipped { .. } => None,
        })
        .filter(|definition| name.is_none_or(|wanted| definition_name(definition) == Some(wanted)))
        .collect();
    let shown = file.display();
    match matching.len() {
        1 => {}
        0 => {
            let what = name.map_or(String::new(), |n| format!(" named {n:?}"));
            eprintln!("vmpod: error: {shown}: no VirtualMachine or VirtualMachineInstance{what}");
            return Err(ExitCode::from(DEFINITION_ERROR));
        }
        count => {
            eprintln!("vmpod: error: {shown}: {count} VM definitions; choose one with --name");
            return Err(ExitCode::from(DEFINITION_ERROR));
        }
    }
    let definition = matching.remove(0);
    match definition.outcome {
        Ok(valid) => {
            log_ignored_once(&valid.ignored);
            Ok(valid)
        }
        Err(problems) => {
            vmpod::logging::report_problems(&format!("{shown}: {}", definition.origin), &problems);
            Err(ExitCode::from(DEFINITION_ERROR))
        }
    }
}

fn definition_name(definition: &Definition) -> Option<&str> {
    // Origins read `Kind namespace/name` or `Kind name`.
    let last_word = definition.origin.rsplit(' ').next()?;
    Some(last_word.rsplit('/').next().unwrap_or(last_word))
}

fn log_ignored_once(ignored: &[Ignored]) {
    let mut logged = BTreeSet::new();
    for field in ignored {
        if logged.insert(&field.path) {
            log::info!("ignored {}: {}", field.path, field.reason);
        }
    }
}

pub fn render(file: &Path, name: Option<&str>, format: Format) -> ExitCode {
    let valid = match load_one(file, name) {
        Ok(valid) => valid,
        Err(code) => return code,
    };
    let text = match format {
        Format::Yaml => serde_norway::to_string(&valid.config).map_err(|e| e.to_string()),
        Format::Json => serde_json::to_string_pretty(&valid.config)
            .map(|json| json + "\n")
            .map_err(|e| e.to_string()),
    };
    print_or_report(text, "the configuration")
}

/// Prints what `render` made, or why it could not.
fn print_or_report(text: Result<String, String>, what: &str) -> ExitCode {
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vmpod: error: cannot print {what}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `vmpod render --pod`: the manifests that run the file's VM with vmpod,
/// as YAML documents or a JSON List.
pub fn render_pod(
    file: &Path,
    name: Option<&str>,
    format: Format,
    options: &vmpod::pod::render::PodOptions,
) -> ExitCode {
    let valid = match load_one(file, name) {
        Ok(valid) => valid,
        Err(code) => return code,
    };
    let definition = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("vmpod: error: cannot read {}: {error}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let documents = vmpod::pod::render::render(&valid.config, &definition, options);
    let text = match format {
        Format::Yaml => documents
            .iter()
            .map(serde_norway::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| {
                texts
                    .iter()
                    .map(|text| format!("{}\n", text.trim_end()))
                    .collect::<Vec<_>>()
                    .join("---\n")
            })
            .map_err(|e| e.to_string()),
        Format::Json => serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": documents,
        }))
        .map(|json| json + "\n")
        .map_err(|e| e.to_string()),
    };
    print_or_report(text, "the manifests")
}

/// `vmpod stage-tools DIR` (an init container of `render --pod --copy-images`).
pub fn stage_tools(dir: &Path) -> ExitCode {
    match vmpod::pod::copy::stage_tools(dir) {
        Ok(written) => {
            for path in written {
                println!("staged {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vmpod: error: stage-tools: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `vmpod copy-files DEST PATH…` (an init container of `render --pod --copy-images`).
pub fn copy_files(destination: &Path, paths: &[std::path::PathBuf]) -> ExitCode {
    match vmpod::pod::copy::copy_files(destination, paths) {
        Ok(copied) => {
            for (path, bytes) in copied {
                println!("copied {} ({bytes} bytes)", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vmpod: error: copy-files: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `vmpod launch`: a definition file is read here when no cluster is
/// configured; everything that needs the cluster goes through the
/// `vmpod-cluster` helper (`args` are the definition options for it).
pub fn launch(
    name: Option<&str>,
    from: &vmpod::source::From,
    helper_args: &[std::ffi::OsString],
    options: &vmpod::launch::LaunchOptions,
) -> ExitCode {
    let offline = match from {
        vmpod::source::From::File(path) if vmpod::cluster::configured().is_none() => Some(path),
        _ => None,
    };
    let found = match offline {
        Some(path) => vmpod::source::find_offline(name, path).map(|resolved| (resolved, None)),
        None => vmpod::source::remote::resolve(helper_args).map_err(|error| match error {
            vmpod::source::remote::RemoteError::Failed { code } => return_code(code),
            other => vmpod::source::SourceError::NotFound(other.to_string()),
        }),
    };
    let (resolved, reporter) = match found {
        Ok(found) => found,
        Err(error) => return report_source_error(error),
    };
    log_ignored_once(&resolved.valid.ignored);
    let config = &resolved.valid.config;
    log::info!(
        "starting VM {}/{} ({}) from {}",
        config.identity.namespace,
        config.identity.name,
        summary(config),
        resolved.origin
    );
    if config.run_strategy == vmpod::spec::config::RunStrategy::Halted {
        log::info!("the definition says the VM stays off (spec.running: false or runStrategy: Halted): not starting it; set spec.running: true or runStrategy: Always");
        if let Some(link) = reporter {
            link.finish("its definition says it stays off");
        }
        return ExitCode::SUCCESS;
    }
    match vmpod::launch::run(config, options, reporter) {
        Ok(vmpod::vmm::Outcome::Poweroff) => ExitCode::SUCCESS,
        // Like a process killed by that signal: 143 after SIGTERM.
        Ok(vmpod::vmm::Outcome::ForcedStop(signal)) => {
            ExitCode::from(128u8.saturating_add(signal as u8))
        }
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// The helper's exit status, carried through as a source error.
fn return_code(code: u8) -> vmpod::source::SourceError {
    vmpod::source::SourceError::HelperFailed { code }
}

/// Prints why no VM could be found; the exit status says what kind of failure.
pub fn report_source_error(error: vmpod::source::SourceError) -> ExitCode {
    match error {
        // The helper has said why already (its stderr is ours).
        vmpod::source::SourceError::HelperFailed { code } => ExitCode::from(code),
        vmpod::source::SourceError::Invalid { origin, problems } => {
            vmpod::logging::report_problems(&format!("vmpod: error: {origin}"), &problems);
            ExitCode::from(DEFINITION_ERROR)
        }
        error => {
            report(&error);
            ExitCode::from(DEFINITION_ERROR)
        }
    }
}

/// Exit status when the image opens but has nothing vmpod can boot.
const NOT_BOOTABLE: u8 = 2;

/// `vmpod inspect-disk IMAGE`: partitions, file systems, boot entries and
/// the kernel, initrd and command line vmpod would boot, without booting.
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
