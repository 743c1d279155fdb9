//! The control plane: Unix sockets in the run directory through which the
//! `/vm/*` helpers and QMP clients reach the VM. Runs on its own thread
//! (`control`): one epoll loop for every socket. It reaches the VMM only
//! through requests and the shared lifecycle status and events.

pub mod hmp;
pub mod qmp;
pub mod rundir;
pub mod serial;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use serde_json::{json, Value};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::{RequestSender, VmRequest};
use crate::lifecycle::{EventReceiver, SharedStatus, Status};
use crate::spec::config::CpuTopology;

/// What the control plane may know of and ask of the VM.
pub struct VmControl {
    pub name: String,
    pub uuid: String,
    pub topology: CpuTopology,
    pub status: SharedStatus,
    pub requests: RequestSender,
}

impl VmControl {
    fn ask(&self, request: VmRequest) {
        // The VMM is gone only when the VM has ended; nothing to do then.
        let _ = self.requests.send(request);
    }

    /// Pauses the vCPUs; returns once they are paused.
    pub fn pause(&self) -> Result<(), String> {
        if self.status.get() == Status::Running {
            self.ask(VmRequest::Pause);
            qmp::wait_for_status(self, Status::Paused)?;
        }
        Ok(())
    }

    pub fn resume(&self) -> Result<(), String> {
        if self.status.get() == Status::Paused {
            self.ask(VmRequest::Resume);
            qmp::wait_for_status(self, Status::Running)?;
        }
        Ok(())
    }

    pub fn reset(&self) {
        self.ask(VmRequest::Reset("a system_reset command"));
    }

    pub fn powerdown(&self) {
        self.ask(VmRequest::Powerdown);
    }

    pub fn quit(&self) {
        self.ask(VmRequest::Quit);
    }

    /// `query-cpus-fast`: one entry per vCPU with its topology position.
    pub fn cpus_fast(&self) -> Vec<Value> {
        let CpuTopology {
            sockets,
            cores,
            threads,
        } = self.topology;
        (0..sockets * cores * threads)
            .map(|index| {
                json!({
                    "cpu-index": index,
                    "qom-path": format!("/machine/unattached/device[{index}]"),
                    "target": "x86_64",
                    "props": {
                        "socket-id": index / (cores * threads),
                        "core-id": (index / threads) % cores,
                        "thread-id": index % threads,
                    },
                })
            })
            .collect()
    }
}

const QMP_LISTENER: u64 = serial::TOKEN_LIMIT;
const EVENTS: u64 = serial::TOKEN_LIMIT + 1;
const STOP: u64 = serial::TOKEN_LIMIT + 2;
const FIRST_QMP_CLIENT: u64 = 2 * serial::TOKEN_LIMIT;
/// At most this many QMP clients at once.
pub const MAX_QMP_CLIENTS: usize = 16;

pub struct ControlLoop {
    epoll: Arc<Epoll>,
    serial: serial::SerialServer,
    qmp_listener: UnixListener,
    qmp_clients: Vec<(u64, qmp::QmpClient)>,
    next_qmp_client: u64,
    events: EventReceiver,
    vm: VmControl,
}

impl ControlLoop {
    pub fn new(
        epoll: Arc<Epoll>,
        serial: serial::SerialServer,
        qmp_listener: UnixListener,
        events: EventReceiver,
        vm: VmControl,
    ) -> std::io::Result<Self> {
        let readable = |data| EpollEvent::new(EventSet::IN, data);
        epoll.ctl(
            ControlOperation::Add,
            qmp_listener.as_raw_fd(),
            readable(QMP_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            events.wake.as_raw_fd(),
            readable(EVENTS),
        )?;
        Ok(ControlLoop {
            epoll,
            serial,
            qmp_listener,
            qmp_clients: Vec::new(),
            next_qmp_client: 0,
            events,
            vm,
        })
    }

    /// Serves every socket until `stop` is signalled.
    pub fn run(&mut self, stop: &EventFd) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let timeout = if self.serial.has_waiting_input() {
                10
            } else {
                -1
            };
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            for event in &events[..count] {
                match event.data() {
                    STOP => return Ok(()),
                    QMP_LISTENER => self.accept_qmp(),
                    EVENTS => self.broadcast_events(),
                    token if token >= FIRST_QMP_CLIENT => self.serve_qmp(token),
                    token => self.serial.handle(token, event.event_set()),
                }
            }
            self.serial.after_events();
            self.flush_qmp();
        }
    }

    fn accept_qmp(&mut self) {
        loop {
            match self.qmp_listener.accept() {
                Ok((stream, _)) => {
                    if self.qmp_clients.len() >= MAX_QMP_CLIENTS {
                        log::warn!("refused a QMP client: {MAX_QMP_CLIENTS} are connected already");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = FIRST_QMP_CLIENT + self.next_qmp_client;
                    self.next_qmp_client += 1;
                    let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
                    if self
                        .epoll
                        .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
                        .is_ok()
                    {
                        self.qmp_clients
                            .push((token, qmp::QmpClient::new(stream, &self.vm)));
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    log::warn!("accepting a QMP client failed: {error}");
                    return;
                }
            }
        }
    }

    fn serve_qmp(&mut self, token: u64) {
        let Some(index) = self.qmp_clients.iter().position(|(t, _)| *t == token) else {
            return;
        };
        if !self.qmp_clients[index].1.on_readable(&self.vm) {
            // Answers to its last commands still go out, as far as they can.
            let (_, mut client) = self.qmp_clients.remove(index);
            client.flush();
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                client.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn broadcast_events(&mut self) {
        let _ = self.events.wake.read();
        while let Ok(event) = self.events.receiver.try_recv() {
            for (_, client) in &mut self.qmp_clients {
                client.send_event(&event);
            }
        }
    }

    fn flush_qmp(&mut self) {
        let epoll = &self.epoll;
        self.qmp_clients.retain_mut(|(_, client)| {
            let alive = client.flush();
            if !alive {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    client.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            alive
        });
    }
}
