//! QMP, the QEMU Machine Protocol, as QEMU's own client libraries expect
//! it: a greeting, `qmp_capabilities` negotiation, commands answered with
//! `return` or `error` (QEMU's error classes), the request `id` echoed, and
//! asynchronous events with timestamps. Input is a stream of JSON objects
//! (not lines); every reply and event ends with CRLF.
//!
//! Runs on the control thread. Reaches the VMM only through requests and
//! the shared lifecycle status.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::hmp;
use super::outbox::{on_readable, Connection, Outbox};
use super::VmControl;
use crate::lifecycle::{Status, Timed};

/// Input beyond this without a complete JSON value is refused.
pub const MAX_INPUT: usize = 1024 * 1024;
/// A client this far behind on replies and events is detached.
const MAX_BACKLOG: usize = 4 * 1024 * 1024;

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

pub struct QmpClient {
    pub outbox: Outbox,
    input: Vec<u8>,
    /// Skipping an over-long value until the next line.
    discarding: bool,
    negotiated: bool,
}

impl QmpClient {
    pub fn new(stream: UnixStream, vm: &VmControl) -> Self {
        let mut client = QmpClient {
            outbox: Outbox::new(stream, MAX_BACKLOG),
            input: Vec::new(),
            discarding: false,
            negotiated: false,
        };
        client.send(&greeting(vm));
        client
    }

    fn send(&mut self, message: &Value) {
        self.outbox.queue(message.to_string().as_bytes());
        self.outbox.queue(b"\r\n");
    }

    /// Reads what arrived and answers every complete command; false when
    /// the client is gone or must be dropped.
    pub fn on_readable(&mut self, vm: &VmControl) -> bool {
        on_readable(self, vm)
    }

    fn handle_input(&mut self, bytes: &[u8], vm: &VmControl) {
        if self.discarding {
            // Resynchronise at a line end, as a client's next command starts.
            match bytes.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    self.discarding = false;
                    return self.handle_input(&bytes[at + 1..], vm);
                }
                None => return,
            }
        }
        self.input.extend_from_slice(bytes);
        self.handle_complete_values(vm);
        if self.input.len() > MAX_INPUT {
            self.input.clear();
            self.discarding = true;
            self.send(&error("GenericError", &format!("input exceeds {MAX_INPUT} bytes without a complete JSON value; discarded up to the next line"), None));
        }
    }

    fn handle_complete_values(&mut self, vm: &VmControl) {
        let mut consumed = 0;
        let mut stream = serde_json::Deserializer::from_slice(&self.input).into_iter::<Value>();
        let mut values = Vec::new();
        let mut parse_error = None;
        loop {
            match stream.next() {
                Some(Ok(value)) => {
                    consumed = stream.byte_offset();
                    values.push(value);
                }
                Some(Err(error)) if error.is_eof() => break,
                Some(Err(error)) => {
                    parse_error = Some(error);
                    break;
                }
                None => {
                    consumed = self.input.len();
                    break;
                }
            }
        }
        for value in values {
            let reply = self.execute(value, vm);
            self.send(&reply);
        }
        if let Some(failure) = parse_error {
            // Skip the rest of the bad line; the next line starts afresh.
            let rest = &self.input[consumed..];
            consumed += rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |at| at + 1);
            self.send(&error(
                "GenericError",
                &format!("JSON parse error, {failure}"),
                None,
            ));
        }
        self.input.drain(..consumed);
    }

    fn execute(&mut self, message: Value, vm: &VmControl) -> Value {
        let Value::Object(mut message) = message else {
            return error("GenericError", "QMP input must be a JSON object", None);
        };
        let id = message.remove("id");
        let Some(Value::String(command)) = message.remove("execute") else {
            return error("GenericError", "QMP input lacks member 'execute'", id);
        };
        let arguments = match message.remove("arguments") {
            None => Map::new(),
            Some(Value::Object(arguments)) => arguments,
            Some(_) => {
                return error(
                    "GenericError",
                    "QMP input member 'arguments' must be an object",
                    id,
                )
            }
        };
        if let Some(unknown) = message.keys().next() {
            return error(
                "GenericError",
                &format!("QMP input member '{unknown}' is unexpected"),
                id,
            );
        }
        if !self.negotiated && command != "qmp_capabilities" {
            return error(
                "CommandNotFound",
                "Expecting capabilities negotiation with 'qmp_capabilities'",
                id,
            );
        }
        match run_command(&command, &arguments, vm, &mut self.negotiated) {
            Ok(result) => with_id(json!({ "return": result }), id),
            Err((class, description)) => error(&class, &description, id),
        }
    }

    pub fn send_event(&mut self, event: &Timed) {
        if self.negotiated {
            let since_epoch = event.at.duration_since(UNIX_EPOCH).unwrap_or_default();
            self.send(&json!({
                "event": event.event.qmp_name(),
                "data": {},
                "timestamp": { "seconds": since_epoch.as_secs(), "microseconds": since_epoch.subsec_micros() },
            }));
        }
    }
}

fn greeting(vm: &VmControl) -> Value {
    let (major, minor, micro) = version_numbers();
    json!({
        "QMP": {
            "version": {
                "qemu": { "major": major, "minor": minor, "micro": micro },
                "package": format!("vmpod {}", env!("CARGO_PKG_VERSION")),
            },
            "capabilities": [],
        },
        "vmpod": { "vm": vm.name },
    })
}

fn version_numbers() -> (u64, u64, u64) {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn with_id(mut reply: Value, id: Option<Value>) -> Value {
    if let (Some(id), Value::Object(map)) = (id, &mut reply) {
        map.insert("id".into(), id);
    }
    reply
}

fn error(class: &str, description: &str, id: Option<Value>) -> Value {
    with_id(
        json!({ "error": { "class": class, "desc": description } }),
        id,
    )
}

type CommandResult = Result<Value, (String, String)>;

fn generic(description: impl Into<String>) -> (String, String) {
    ("GenericError".into(), description.into())
}

fn no_arguments(command: &str, arguments: &Map<String, Value>) -> Result<(), (String, String)> {
    match arguments.keys().next() {
        Some(name) => Err(generic(format!(
            "Parameter '{name}' is unexpected for '{command}'"
        ))),
        None => Ok(()),
    }
}

/// Runs one command (after the envelope was checked).
fn run_command(
    command: &str,
    arguments: &Map<String, Value>,
    vm: &VmControl,
    negotiated: &mut bool,
) -> CommandResult {
    if command == "human-monitor-command" {
        return human_monitor_command(arguments, vm);
    }
    if command == "send-key" {
        return send_key(arguments, vm);
    }
    if command == "qmp_capabilities" {
        if *negotiated {
            return Err((
                "CommandNotFound".into(),
                "Capabilities negotiation is already complete, command ignored".into(),
            ));
        }
        if let Some(enable) = arguments.get("enable") {
            if enable.as_array().is_none_or(|list| !list.is_empty()) {
                return Err(generic("vmpod offers no optional QMP capabilities"));
            }
        }
        *negotiated = true;
        return Ok(json!({}));
    }
    if !COMMANDS.contains(&command) {
        return Err((
            "CommandNotFound".into(),
            format!("The command {command} has not been found"),
        ));
    }
    no_arguments(command, arguments)?;
    query_or_act(command, vm)
}

fn query_or_act(command: &str, vm: &VmControl) -> CommandResult {
    Ok(match command {
        "query-status" => {
            let status = vm.status.get();
            let name = match status {
                Status::Running => "running",
                Status::Paused => "paused",
                Status::Shutdown => "shutdown",
                Status::Starting => "prelaunch",
            };
            json!({ "running": status == Status::Running, "singlestep": false, "status": name })
        }
        "query-version" => {
            let (major, minor, micro) = version_numbers();
            json!({ "qemu": { "major": major, "minor": minor, "micro": micro }, "package": format!("vmpod {}", env!("CARGO_PKG_VERSION")) })
        }
        "query-name" => json!({ "name": vm.name }),
        "query-uuid" => json!({ "UUID": vm.uuid }),
        "query-cpus-fast" => Value::Array(vm.cpus_fast()),
        "query-block" => json!([]), // vmpod attaches no block devices yet
        "query-commands" => Value::Array(
            COMMANDS
                .iter()
                .map(|name| json!({ "name": name }))
                .collect(),
        ),
        "stop" => {
            vm.pause().map_err(generic)?;
            json!({})
        }
        "cont" => {
            vm.resume().map_err(generic)?;
            json!({})
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
        other => {
            return Err((
                "CommandNotFound".into(),
                format!("The command {other} has not been found"),
            ))
        }
    })
}

fn human_monitor_command(arguments: &Map<String, Value>, vm: &VmControl) -> CommandResult {
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
    Ok(Value::String(hmp::run(command_line, vm)))
}

/// `send-key`: `{"keys": [{"type": "qcode", "data": "ctrl"}, …], "hold-time": ms}`.
fn send_key(arguments: &Map<String, Value>, vm: &VmControl) -> CommandResult {
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
    Ok(json!({}))
}

/// Waits (briefly, on the control thread) for the VMM to reach `wanted`.
pub fn wait_for_status(vm: &VmControl, wanted: Status) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while vm.status.get() != wanted {
        if vm.status.get() == Status::Shutdown || Instant::now() > deadline {
            return Err(format!("the VM did not become {wanted:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl Connection for QmpClient {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn take_input(&mut self, bytes: &[u8], vm: &VmControl) {
        self.handle_input(bytes, vm);
    }
}
