//! The human monitor on monitor.sock: a banner, a `(vmpod) ` prompt, one
//! command per line (see `hmp`), for `kubectl exec -it POD -- /vm/monitor`.
//! A line whose answer waits for the VM (`stop`, `cont`) holds back the
//! prompt and the lines after it until the VM has changed state.
//!
//! Runs on the control thread.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

use super::hmp;
use super::outbox::{on_readable, Connection, Outbox};
use super::{VmControl, Wait};
use crate::api::Status;

const PROMPT: &[u8] = b"(vmpod) ";
/// A line longer than this is refused.
const MAX_LINE: usize = 64 * 1024;
const MAX_BACKLOG: usize = 1024 * 1024;
/// Lines held behind a pending answer at most; more are refused.
const MAX_HELD_LINES: usize = 1024;

pub struct MonitorClient {
    pub outbox: Outbox,
    line: Vec<u8>,
    /// The status the last command's answer waits for.
    waiting_for: Wait,
    /// Lines that came while an answer was pending.
    held: VecDeque<String>,
}

impl MonitorClient {
    pub fn new(stream: UnixStream, vm: &VmControl) -> Self {
        let mut outbox = Outbox::new(stream, MAX_BACKLOG);
        let banner = format!(
            "vmpod monitor for VM {} - type 'help' for more information\r\n",
            vm.name
        );
        outbox.queue(banner.as_bytes());
        outbox.queue(PROMPT);
        MonitorClient {
            outbox,
            line: Vec::new(),
            waiting_for: None,
            held: VecDeque::new(),
        }
    }

    /// Runs a line now, or holds it while an earlier answer is pending.
    fn run_line(&mut self, line: String, vm: &VmControl) {
        if self.waiting_for.is_some() {
            if self.held.len() < MAX_HELD_LINES {
                self.held.push_back(line);
            } else {
                self.outbox
                    .queue(b"too many lines while waiting for the VM: ignored\r\n");
            }
            return;
        }
        let reply = hmp::run(&line, vm);
        self.outbox.queue(reply.text.as_bytes());
        self.waiting_for = reply.wait;
        if reply.wait.is_none() {
            self.outbox.queue(PROMPT);
        }
    }

    /// The VM reached `status`: finishes a pending `stop` or `cont`, then
    /// runs the lines that waited behind it.
    pub fn on_status(&mut self, status: Status, vm: &VmControl) {
        let Some(wanted) = self.waiting_for else {
            return;
        };
        if status != wanted && status != Status::Shutdown {
            return;
        }
        self.waiting_for = None;
        if status != wanted {
            self.outbox.queue(b"the VM shut down\r\n");
        }
        self.outbox.queue(PROMPT);
        while self.waiting_for.is_none() {
            let Some(line) = self.held.pop_front() else {
                break;
            };
            self.run_line(line, vm);
        }
    }

    /// Runs every complete line; false when the client is gone.
    pub fn on_readable(&mut self, vm: &VmControl) -> bool {
        on_readable(self, vm)
    }

    /// Runs every complete line in `received`.
    fn handle_input(&mut self, received: &[u8], vm: &VmControl) {
        for &byte in received {
            match byte {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.line).trim().to_owned();
                    self.line.clear();
                    self.run_line(line, vm);
                }
                b'\r' => {}
                _ if self.line.len() >= MAX_LINE => {
                    self.line.clear();
                    self.outbox.queue(
                        format!("\r\nline longer than {MAX_LINE} bytes: ignored\r\n").as_bytes(),
                    );
                    self.outbox.queue(PROMPT);
                }
                _ => self.line.push(byte),
            }
        }
    }
}

impl Connection for MonitorClient {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn take_input(&mut self, bytes: &[u8], vm: &VmControl) {
        self.handle_input(bytes, vm);
    }
}
