//! The human monitor on monitor.sock: a banner, a `(vmpod) ` prompt, one
//! command per line (see `hmp`), for `kubectl exec -it POD -- /vm/monitor`.
//!
//! Runs on the control thread.

use std::os::unix::net::UnixStream;

use super::hmp;
use super::outbox::{on_readable, Connection, Outbox};
use super::VmControl;

const PROMPT: &[u8] = b"(vmpod) ";
/// A line longer than this is refused.
const MAX_LINE: usize = 64 * 1024;
const MAX_BACKLOG: usize = 1024 * 1024;

pub struct MonitorClient {
    pub outbox: Outbox,
    line: Vec<u8>,
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
                    let output = hmp::run(&line, vm);
                    self.outbox.queue(output.as_bytes());
                    self.outbox.queue(PROMPT);
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
