//! QMP's commands, once the envelope (`execute`, `arguments`, `id`) has
//! been checked: queries answered from what the control plane knows, and
//! actions sent to the VMM as commands. `stop` and `cont` answer once the
//! VM has changed state (the client waits; the control thread does not).
//!
//! Control thread.

use serde_json::{json, Map, Value};

use super::{hmp, VmControl, Wait};

/// The commands vmpod implements, as `query-commands` lists them.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "query-version",
    "query-name",
    "query-uuid",
    "query-cpus-fast",
    "query-block",
    "query-commands",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "human-monitor-command",
    "send-key",
];

/// A QEMU error class and description.
pub type Failure = (String, String);

/// The `return` value, and the status it waits for before it is sent.
pub struct Answer {
    pub value: Value,
    pub wait: Wait,
}

fn now(value: Value) -> Result<Answer, Failure> {
    Ok(Answer { value, wait: None })
}

pub fn generic(description: impl Into<String>) -> Failure {
    ("GenericError".into(), description.into())
}

fn not_found(command: &str) -> Failure {
    (
        "CommandNotFound".into(),
        format!("The command {command} has not been found"),
    )
}

fn no_arguments(command: &str, arguments: &Map<String, Value>) -> Result<(), Failure> {
    match arguments.keys().next() {
        Some(name) => Err(generic(format!(
            "Parameter '{name}' is unexpected for '{command}'"
        ))),
        None => Ok(()),
    }
}

pub fn version_numbers() -> (u64, u64, u64) {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Runs one command other than `qmp_capabilities`.
pub fn run(
    command: &str,
    arguments: &Map<String, Value>,
    vm: &VmControl,
) -> Result<Answer, Failure> {
    match command {
        "human-monitor-command" => human_monitor_command(arguments, vm),
        "send-key" => send_key(arguments, vm),
        _ if COMMANDS.contains(&command) => {
            no_arguments(command, arguments)?;
            query_or_act(command, vm)
        }
        _ => Err(not_found(command)),
    }
}

fn query_or_act(command: &str, vm: &VmControl) -> Result<Answer, Failure> {
    let value = match command {
        "query-status" => {
            let status = vm.status.get();
            json!({
                "running": status == crate::api::Status::Running,
                "singlestep": false,
                "status": status.qemu_name(),
            })
        }
        "query-version" => {
            let (major, minor, micro) = version_numbers();
            json!({ "qemu": { "major": major, "minor": minor, "micro": micro }, "package": format!("vmpod {}", env!("CARGO_PKG_VERSION")) })
        }
        "query-name" => json!({ "name": vm.name }),
        "query-uuid" => json!({ "UUID": vm.uuid }),
        "query-cpus-fast" => Value::Array(vm.cpus_fast()),
        "query-block" => Value::Array(vm.block()),
        "query-commands" => Value::Array(
            COMMANDS
                .iter()
                .map(|name| json!({ "name": name }))
                .collect(),
        ),
        "stop" => {
            return Ok(Answer {
                value: json!({}),
                wait: vm.pause().map_err(generic)?,
            })
        }
        "cont" => {
            return Ok(Answer {
                value: json!({}),
                wait: vm.resume().map_err(generic)?,
            })
        }
        "system_reset" => {
            vm.reset();
            json!({})
        }
        "system_powerdown" => {
            vm.powerdown();
            json!({})
        }
        "quit" => {
            vm.quit();
            json!({})
        }
        other => return Err(not_found(other)),
    };
    now(value)
}

fn human_monitor_command(
    arguments: &Map<String, Value>,
    vm: &VmControl,
) -> Result<Answer, Failure> {
    let command_line = match arguments.get("command-line") {
        Some(Value::String(line)) => line,
        Some(_) => {
            return Err(generic(
                "Invalid parameter type for 'command-line', expected: string",
            ))
        }
        None => return Err(generic("Parameter 'command-line' is missing")),
    };
    if let Some(name) = arguments
        .keys()
        .find(|k| *k != "command-line" && *k != "cpu-index")
    {
        return Err(generic(format!("Parameter '{name}' is unexpected")));
    }
    let reply = hmp::run(command_line, vm);
    Ok(Answer {
        value: Value::String(reply.text),
        wait: reply.wait,
    })
}

/// `send-key`: `{"keys": [{"type": "qcode", "data": "ctrl"}, …], "hold-time": ms}`.
fn send_key(arguments: &Map<String, Value>, vm: &VmControl) -> Result<Answer, Failure> {
    let Some(Value::Array(keys)) = arguments.get("keys") else {
        return Err(generic("Parameter 'keys' is missing or not a list"));
    };
    if let Some(name) = arguments.keys().find(|k| *k != "keys" && *k != "hold-time") {
        return Err(generic(format!("Parameter '{name}' is unexpected")));
    }
    let mut qcodes = Vec::with_capacity(keys.len());
    for key in keys {
        match (
            key.get("type").and_then(Value::as_str),
            key.get("data").and_then(Value::as_str),
        ) {
            (Some("qcode"), Some(qcode)) => qcodes.push(qcode),
            _ => {
                return Err(generic(
                    "each key must be {\"type\": \"qcode\", \"data\": NAME}",
                ))
            }
        }
    }
    if qcodes.is_empty() {
        return Err(generic("Parameter 'keys' must name at least one key"));
    }
    vm.send_keys(&qcodes).map_err(generic)?;
    now(json!({}))
}
