//! QMP, the QEMU Machine Protocol, as QEMU's own client libraries expect
//! it: a greeting, `qmp_capabilities` negotiation, commands answered with
//! `return` or `error` (QEMU's error classes) in the order they came, the
//! request `id` echoed, and asynchronous events with timestamps. Input is
//! a stream of JSON objects (not lines); every reply and event ends with
//! CRLF. A malformed value is answered with an error and skipped up to the
//! next line, where the client resynchronises.
//!
//! Runs on the control thread. A command whose answer waits for the VM
//! (`stop`, `cont`) holds back this client's later commands, never the
//! thread: the answer goes out when the VMM's event arrives.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};

use super::outbox::{on_readable, Connection, Outbox};
use super::qmp_commands::{self, generic, version_numbers, Failure};
use super::VmControl;
use crate::api::{Status, Timed};

/// Input beyond this without a complete JSON value is refused.
pub const MAX_INPUT: usize = 1024 * 1024;
/// A client this far behind on replies and events is detached.
const MAX_BACKLOG: usize = 4 * 1024 * 1024;
/// Commands held behind a pending answer at most; more are refused.
const MAX_HELD: usize = 1024;

/// Input that came while an answer was pending, in order.
enum Held {
    Command(Value),
    /// An error reply for input that could not be parsed.
    Error(Value),
}

/// An answer that waits for the VM to reach `wanted`.
struct Pending {
    id: Option<Value>,
    value: Value,
    wanted: Status,
}

pub struct QmpClient {
    pub outbox: Outbox,
    input: Vec<u8>,
    /// Skipping an over-long value until the next line.
    discarding: bool,
    negotiated: bool,
    pending: Option<Pending>,
    held: VecDeque<Held>,
}

impl QmpClient {
    pub fn new(stream: UnixStream, vm: &VmControl) -> Self {
        let mut client = QmpClient {
            outbox: Outbox::new(stream, MAX_BACKLOG),
            input: Vec::new(),
            discarding: false,
            negotiated: false,
            pending: None,
            held: VecDeque::new(),
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
        // Each round stops at a bad line (skipping it); the next goes on.
        while self.handle_complete_values(vm) {}
        if self.input.len() > MAX_INPUT {
            self.input.clear();
            self.discarding = true;
            self.send(&error("GenericError", &format!("input exceeds {MAX_INPUT} bytes without a complete JSON value; discarded up to the next line"), None));
        }
    }

    /// Answers the complete values in the input; true when it stopped at a
    /// bad line and skipped it, so that more may follow.
    fn handle_complete_values(&mut self, vm: &VmControl) -> bool {
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
            self.dispatch(value, vm);
        }
        let resync = parse_error.is_some();
        if let Some(failure) = parse_error {
            // Skip the rest of the bad line; the next line starts afresh.
            let rest = &self.input[consumed..];
            consumed += rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |at| at + 1);
            let reply = error(
                "GenericError",
                &format!("JSON parse error, {failure}"),
                None,
            );
            self.answer_in_turn(reply);
        }
        self.input.drain(..consumed);
        resync && !self.input.is_empty()
    }

    /// Runs a command now, or holds it behind a pending answer.
    fn dispatch(&mut self, value: Value, vm: &VmControl) {
        if self.pending.is_none() {
            self.execute(value, vm);
        } else if self.held.len() < MAX_HELD {
            self.held.push_back(Held::Command(value));
        } else {
            self.send(&error(
                "GenericError",
                "too many commands while an answer is pending: command ignored",
                None,
            ));
        }
    }

    /// An answer that must keep its place behind a pending one.
    fn answer_in_turn(&mut self, reply: Value) {
        if self.pending.is_some() {
            self.held.push_back(Held::Error(reply));
        } else {
            self.send(&reply);
        }
    }

    fn execute(&mut self, message: Value, vm: &VmControl) {
        match self.answer(message, vm) {
            Ok((
                id,
                qmp_commands::Answer {
                    value,
                    wait: Some(wanted),
                },
            )) => {
                self.pending = Some(Pending { id, value, wanted });
            }
            Ok((id, qmp_commands::Answer { value, wait: None })) => {
                self.send(&with_id(json!({ "return": value }), id));
            }
            Err(reply) => self.send(&reply),
        }
    }

    /// Checks the envelope and runs the command; `Err` is the error reply.
    fn answer(
        &mut self,
        message: Value,
        vm: &VmControl,
    ) -> Result<(Option<Value>, qmp_commands::Answer), Value> {
        let Value::Object(mut message) = message else {
            return Err(error(
                "GenericError",
                "QMP input must be a JSON object",
                None,
            ));
        };
        let id = message.remove("id");
        let Some(Value::String(command)) = message.remove("execute") else {
            return Err(error(
                "GenericError",
                "QMP input lacks member 'execute'",
                id,
            ));
        };
        let arguments = match message.remove("arguments") {
            None => Map::new(),
            Some(Value::Object(arguments)) => arguments,
            Some(_) => {
                return Err(error(
                    "GenericError",
                    "QMP input member 'arguments' must be an object",
                    id,
                ))
            }
        };
        if let Some(unknown) = message.keys().next() {
            return Err(error(
                "GenericError",
                &format!("QMP input member '{unknown}' is unexpected"),
                id,
            ));
        }
        let result = if command == "qmp_capabilities" {
            self.negotiate(&arguments)
        } else if !self.negotiated {
            Err((
                "CommandNotFound".into(),
                "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            ))
        } else {
            qmp_commands::run(&command, &arguments, vm)
        };
        match result {
            Ok(answer) => Ok((id, answer)),
            Err((class, description)) => Err(error(&class, &description, id)),
        }
    }

    fn negotiate(
        &mut self,
        arguments: &Map<String, Value>,
    ) -> Result<qmp_commands::Answer, Failure> {
        if self.negotiated {
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
        self.negotiated = true;
        Ok(qmp_commands::Answer {
            value: json!({}),
            wait: None,
        })
    }

    /// The VM reached `status`: sends the answer that waited for it (an
    /// error if the VM shut down instead), then runs the held commands.
    pub fn on_status(&mut self, status: Status, vm: &VmControl) {
        let Some(pending) = self
            .pending
            .take_if(|p| p.wanted == status || status == Status::Shutdown)
        else {
            return;
        };
        let reply = if pending.wanted == status {
            with_id(json!({ "return": pending.value }), pending.id)
        } else {
            error(
                "GenericError",
                &format!(
                    "the VM shut down before it was {}",
                    pending.wanted.qemu_name()
                ),
                pending.id,
            )
        };
        self.send(&reply);
        while self.pending.is_none() {
            match self.held.pop_front() {
                Some(Held::Command(command)) => self.execute(command, vm),
                Some(Held::Error(reply)) => self.send(&reply),
                None => break,
            }
        }
    }

    pub fn send_event(&mut self, event: &Timed) {
        if self.negotiated {
            let since_epoch = event.at.duration_since(UNIX_EPOCH).unwrap_or_default();
            self.send(&json!({
                "event": event.event.qmp_name(),
                "data": event_data(&event.event),
                "timestamp": { "seconds": since_epoch.as_secs(), "microseconds": since_epoch.subsec_micros() },
            }));
        }
    }
}

/// An event's `data`, as QEMU shapes it.
fn event_data(event: &crate::api::Event) -> Value {
    match event {
        crate::api::Event::BlockIoError(error) => json!({
            "device": error.device,
            "node-name": error.device,
            "operation": error.operation,
            "action": "report",
            "nospace": error.nospace,
            "reason": error.reason,
        }),
        _ => json!({}),
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

impl Connection for QmpClient {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn take_input(&mut self, bytes: &[u8], vm: &VmControl) {
        self.handle_input(bytes, vm);
    }
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
