//! The human monitor's commands (`/vm/monitor`, and QMP's
//! `human-monitor-command`): one line in, text out, in QEMU's wording where
//! QEMU has one. `stop` and `cont` answer once the VM has changed state.
//!
//! Control thread.

use super::{VmControl, Wait};

const HELP: &str = "\
cont                 resume the VM
help                 this list
info status|version|name|uuid|cpus|block
quit                 stop the VM and end vmpod (exit 0)
screendump FILE      write the screen to FILE (PNG when it ends in .png, else PPM)
sendkey KEYS         press keys together, e.g. sendkey ctrl-alt-delete
stop                 pause the VM
system_powerdown     press the ACPI power button
system_reset         reset the VM (it boots again)
";

/// What a command line printed, and the status its answer waits for.
pub struct Reply {
    pub text: String,
    pub wait: Wait,
}

fn now(text: impl Into<String>) -> Reply {
    Reply {
        text: text.into(),
        wait: None,
    }
}

fn waiting(result: Result<Wait, String>) -> Reply {
    match result {
        Ok(wait) => Reply {
            text: String::new(),
            wait,
        },
        Err(error) => now(error + "\n"),
    }
}

/// Runs one monitor command line; the text uses CRLF line ends.
pub fn run(line: &str, vm: &VmControl) -> Reply {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut reply = match words.as_slice() {
        [] => now(""),
        ["help"] | ["?"] => now(HELP),
        ["info", what] => now(info(what, vm)),
        ["info"] => now("info status|version|name|uuid|cpus|block\n"),
        ["stop"] => waiting(vm.pause()),
        ["cont"] | ["c"] => waiting(vm.resume()),
        ["system_reset"] => {
            vm.reset();
            now("")
        }
        ["system_powerdown"] => {
            vm.powerdown();
            now("")
        }
        ["sendkey", keys] => {
            let qcodes: Vec<&str> = keys.split('-').collect();
            now(vm
                .send_keys(&qcodes)
                .err()
                .map(|e| e + "\n")
                .unwrap_or_default())
        }
        ["screendump", path] => {
            let format = if path.to_ascii_lowercase().ends_with(".png") {
                super::screendump::Format::Png
            } else {
                super::screendump::Format::Ppm
            };
            now(vm
                .screendump(path, format)
                .err()
                .map(|e| e + "\n")
                .unwrap_or_default())
        }
        ["quit"] | ["q"] => {
            vm.quit();
            now("")
        }
        [command, ..] => now(format!("unknown command: '{command}' (try 'help')\n")),
    };
    reply.text = reply.text.replace('\n', "\r\n");
    reply
}

fn info(what: &str, vm: &VmControl) -> String {
    match what {
        "status" => format!("VM status: {}\n", vm.status.get().qemu_name()),
        "version" => format!("vmpod {}\n", env!("CARGO_PKG_VERSION")),
        "name" => format!("{}\n", vm.name),
        "uuid" => format!("{}\n", vm.uuid),
        "cpus" => vm
            .cpus_fast()
            .iter()
            .map(|cpu| {
                format!(
                    "{}CPU #{}\n",
                    if cpu["cpu-index"] == 0 { "* " } else { "  " },
                    cpu["cpu-index"]
                )
            })
            .collect(),
        "block" => vm
            .block_devices
            .get()
            .iter()
            .map(|disk| {
                format!(
                    "{}: {} ({}{}, {} bytes){}\n",
                    disk.name,
                    disk.file,
                    disk.format,
                    if disk.readonly { ", read-only" } else { "" },
                    disk.size_bytes,
                    disk.backing_file
                        .as_ref()
                        .map(|base| format!("\n    Backing file: {base}"))
                        .unwrap_or_default()
                )
            })
            .collect(),
        other => format!("unknown info: '{other}' (status, version, name, uuid, cpus, block)\n"),
    }
}
