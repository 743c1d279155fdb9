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
    "input-send-event",
    "screendump",
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
        "input-send-event" => input_send_event(arguments, vm),
        "screendump" => screendump(arguments, vm),
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

/// `screendump`: `{"filename": PATH, "format": "ppm"|"png"}` (`device`
/// and `head` name the one display there is).
fn screendump(arguments: &Map<String, Value>, vm: &VmControl) -> Result<Answer, Failure> {
    if let Some(name) = arguments
        .keys()
        .find(|k| !["filename", "format", "device", "head"].contains(&k.as_str()))
    {
        return Err(generic(format!("Parameter '{name}' is unexpected")));
    }
    let Some(Value::String(path)) = arguments.get("filename") else {
        return Err(generic("Parameter 'filename' is missing or not a string"));
    };
    let format = match arguments.get("format") {
        None => super::screendump::Format::Ppm,
        Some(Value::String(name)) => super::screendump::Format::from_qmp(name).map_err(generic)?,
        Some(_) => {
            return Err(generic(
                "Invalid parameter type for 'format', expected: string",
            ))
        }
    };
    if let Some(head) = arguments.get("head") {
        if head.as_u64() != Some(0) {
            return Err(generic(format!(
                "the VM's display has only head 0, not {head}"
            )));
        }
    }
    vm.screendump(path, format).map_err(generic)?;
    now(json!({}))
}

/// `input-send-event`: `{"events": [{"type": "key"|"btn"|"abs", "data": …}]}`
/// as QEMU defines them; `rel` events need a relative pointer, which a
/// tablet is not.
fn input_send_event(arguments: &Map<String, Value>, vm: &VmControl) -> Result<Answer, Failure> {
    use super::InputChange;
    if let Some(name) = arguments
        .keys()
        .find(|k| !["events", "device", "head"].contains(&k.as_str()))
    {
        return Err(generic(format!("Parameter '{name}' is unexpected")));
    }
    let Some(Value::Array(events)) = arguments.get("events") else {
        return Err(generic("Parameter 'events' is missing or not a list"));
    };
    let mut changes = Vec::with_capacity(events.len());
    for event in events {
        let data = &event["data"];
        let down = data["down"].as_bool();
        let change = match (event["type"].as_str(), down) {
            (Some("key"), Some(down)) => {
                let key = match (data["key"]["type"].as_str(), &data["key"]["data"]) {
                    (Some("qcode"), Value::String(qcode)) => crate::api::keys::Key::by_qcode(qcode)
                        .ok_or_else(|| generic(format!("'{qcode}' is not a key vmpod knows")))?,
                    (Some("number"), Value::Number(number)) => number
                        .as_u64()
                        .and_then(crate::api::keys::Key::by_qnum)
                        .ok_or_else(|| generic(format!("key number {number} is not a key vmpod knows")))?,
                    _ => return Err(generic("a key event's key must be {\"type\": \"qcode\"|\"number\", \"data\": …}")),
                };
                InputChange::Key(crate::api::KeyEvent { key, pressed: down })
            }
            (Some("btn"), Some(down)) => {
                let bit = match data["button"].as_str() {
                    Some("left") => 1 << 0,
                    Some("middle") => 1 << 1,
                    Some("right") => 1 << 2,
                    Some("wheel-up") => 1 << 3,
                    Some("wheel-down") => 1 << 4,
                    other => return Err(generic(format!("{other:?} is not a button vmpod's tablet has (left, middle, right, wheel-up, wheel-down)"))),
                };
                InputChange::Button { bit, down }
            }
            (Some("abs"), _) => {
                let value = data["value"]
                    .as_u64()
                    .filter(|value| *value <= u64::from(crate::api::display::POINTER_MAX))
                    .ok_or_else(|| generic("an abs event's value must be 0..32767"))? as u16;
                match data["axis"].as_str() {
                    Some("x") => InputChange::X(value),
                    Some("y") => InputChange::Y(value),
                    other => return Err(generic(format!("{other:?} is not an axis (x or y)"))),
                }
            }
            (Some("rel"), _) => {
                return Err(generic("rel events need a relative pointer; vmpod's is an absolute tablet (use abs)"))
            }
            _ => return Err(generic("each event must be {\"type\": \"key\"|\"btn\"|\"abs\", \"data\": …} with the fields QEMU defines")),
        };
        changes.push(change);
    }
    vm.send_input(changes);
    now(json!({}))
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
