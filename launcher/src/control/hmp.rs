//! The human monitor's commands (`/vm/monitor`, and QMP's
//! `human-monitor-command`): one line in, text out, in QEMU's wording where
//! QEMU has one.

use super::VmControl;
use crate::lifecycle::Status;

const HELP: &str = "\
cont                 resume the VM
help                 this list
info status|version|name|uuid|cpus|block
quit                 stop the VM and end vmpod (exit 0)
sendkey KEYS         press keys together, e.g. sendkey ctrl-alt-delete
stop                 pause the VM
system_powerdown     press the ACPI power button
system_reset         reset the VM (it boots again)
";

/// Runs one monitor command line and returns what the monitor prints.
pub fn run(line: &str, vm: &VmControl) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let text = match words.as_slice() {
        [] => String::new(),
        ["help"] | ["?"] => HELP.to_owned(),
        ["info", what] => info(what, vm),
        ["info"] => "info status|version|name|uuid|cpus|block\n".to_owned(),
        ["stop"] => vm.pause().err().map(|e| e + "\n").unwrap_or_default(),
        ["cont"] | ["c"] => vm.resume().err().map(|e| e + "\n").unwrap_or_default(),
        ["system_reset"] => {
            vm.reset();
            String::new()
        }
        ["system_powerdown"] => {
            vm.powerdown();
            String::new()
        }
        ["sendkey", keys] => {
            let qcodes: Vec<&str> = keys.split('-').collect();
            vm.send_keys(&qcodes)
                .err()
                .map(|e| e + "\n")
                .unwrap_or_default()
        }
        ["quit"] | ["q"] => {
            vm.quit();
            String::new()
        }
        [command, ..] => format!("unknown command: '{command}' (try 'help')\n"),
    };
    text.replace('\n', "\r\n")
}

fn info(what: &str, vm: &VmControl) -> String {
    match what {
        "status" => {
            let status = match vm.status.get() {
                Status::Running => "running",
                Status::Paused => "paused",
                Status::Shutdown => "shutdown",
                Status::Starting => "prelaunch",
            };
            format!("VM status: {status}\n")
        }
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
        "block" => String::new(), // no block devices are attached yet
        other => format!("unknown info: '{other}' (status, version, name, uuid, cpus, block)\n"),
    }
}
