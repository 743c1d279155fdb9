//! The control plane: Unix sockets in the run directory through which the
//! `/vm/*` helpers and QMP clients reach the VM. Runs on its own thread
//! (`control`): one epoll loop for every socket. It reaches the VMM only
//! through requests and the shared lifecycle status and events.

pub mod hmp;
pub mod monitor;
pub mod outbox;
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

    /// Presses the named keys together (qcodes) and lets them go.
    pub fn send_keys(&self, qcodes: &[&str]) -> Result<(), String> {
        let scancodes = crate::devices::legacy::keys::chord(qcodes)?;
        self.ask(VmRequest::SendKeys(scancodes));
        Ok(())
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
const MONITOR_LISTENER: u64 = serial::TOKEN_LIMIT + 3;
const READY_LISTENER: u64 = serial::TOKEN_LIMIT + 4;
const FIRST_CLIENT: u64 = 2 * serial::TOKEN_LIMIT;
/// At most this many QMP and monitor clients at once.
pub const MAX_CLIENTS: usize = 16;

/// The control sockets beside the serial one.
pub struct Listeners {
    pub qmp: UnixListener,
    pub monitor: UnixListener,
    pub ready: UnixListener,
}

/// A QMP or monitor connection.
enum Client {
    Qmp(qmp::QmpClient),
    Monitor(monitor::MonitorClient),
}

impl Client {
    fn outbox(&mut self) -> &mut outbox::Outbox {
        match self {
            Client::Qmp(client) => &mut client.outbox,
            Client::Monitor(client) => &mut client.outbox,
        }
    }

    fn on_readable(&mut self, vm: &VmControl) -> bool {
        match self {
            Client::Qmp(client) => client.on_readable(vm),
            Client::Monitor(client) => client.on_readable(vm),
        }
    }
}

pub struct ControlLoop {
    epoll: Arc<Epoll>,
    serial: serial::SerialServer,
    listeners: Listeners,
    clients: Vec<(u64, Client)>,
    next_client: u64,
    events: EventReceiver,
    vm: VmControl,
    ready: Readiness,
}

/// What `/vm/ready` waits for.
pub struct Readiness {
    /// Set once the serial pattern appeared (or from the start without one).
    pub pattern_seen: Arc<std::sync::atomic::AtomicBool>,
    pub pattern: Option<String>,
}

impl ControlLoop {
    pub fn new(
        epoll: Arc<Epoll>,
        serial: serial::SerialServer,
        listeners: Listeners,
        events: EventReceiver,
        vm: VmControl,
        ready: Readiness,
    ) -> std::io::Result<Self> {
        let readable = |data| EpollEvent::new(EventSet::IN, data);
        epoll.ctl(
            ControlOperation::Add,
            listeners.qmp.as_raw_fd(),
            readable(QMP_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listeners.monitor.as_raw_fd(),
            readable(MONITOR_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listeners.ready.as_raw_fd(),
            readable(READY_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            events.wake.as_raw_fd(),
            readable(EVENTS),
        )?;
        Ok(ControlLoop {
            epoll,
            serial,
            listeners,
            clients: Vec::new(),
            next_client: 0,
            events,
            vm,
            ready,
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
                    QMP_LISTENER => self.accept(false),
                    MONITOR_LISTENER => self.accept(true),
                    READY_LISTENER => self.answer_readiness(),
                    EVENTS => self.broadcast_events(),
                    token if token >= FIRST_CLIENT => self.serve(token),
                    token => self.serial.handle(token, event.event_set()),
                }
            }
            self.serial.after_events();
            self.flush_clients();
        }
    }

    fn accept(&mut self, monitor: bool) {
        let listener = if monitor {
            &self.listeners.monitor
        } else {
            &self.listeners.qmp
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        log::warn!("refused a control client: {MAX_CLIENTS} are connected already");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = FIRST_CLIENT + self.next_client;
                    self.next_client += 1;
                    let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
                    if self
                        .epoll
                        .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
                        .is_ok()
                    {
                        let client = if monitor {
                            Client::Monitor(monitor::MonitorClient::new(stream, &self.vm))
                        } else {
                            Client::Qmp(qmp::QmpClient::new(stream, &self.vm))
                        };
                        self.clients.push((token, client));
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    log::warn!("accepting a control client failed: {error}");
                    return;
                }
            }
        }
    }

    fn serve(&mut self, token: u64) {
        let Some(index) = self.clients.iter().position(|(t, _)| *t == token) else {
            return;
        };
        if !self.clients[index].1.on_readable(&self.vm) {
            // Answers to its last commands still go out, as far as they can.
            let (_, mut client) = self.clients.remove(index);
            client.outbox().flush();
            let fd = client.outbox().stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// `/vm/ready`: one line, then the connection closes.
    fn answer_readiness(&mut self) {
        while let Ok((mut stream, _)) = self.listeners.ready.accept() {
            let answer = match (self.vm.status.get(), &self.ready.pattern) {
                (Status::Running, _)
                    if self
                        .ready
                        .pattern_seen
                        .load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    "ready\n".to_owned()
                }
                (Status::Running, Some(pattern)) => {
                    format!("not ready: {pattern:?} has not appeared on the serial console\n")
                }
                (status, _) => format!(
                    "not ready: the VM is {}\n",
                    format!("{status:?}").to_lowercase()
                ),
            };
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    }

    fn broadcast_events(&mut self) {
        let _ = self.events.wake.read();
        while let Ok(event) = self.events.receiver.try_recv() {
            for (_, client) in &mut self.clients {
                if let Client::Qmp(client) = client {
                    client.send_event(&event);
                }
            }
        }
    }

    fn flush_clients(&mut self) {
        let epoll = &self.epoll;
        self.clients.retain_mut(|(_, client)| {
            let alive = client.outbox().flush();
            if !alive {
                let fd = client.outbox().stream.as_raw_fd();
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            alive
        });
    }
}
