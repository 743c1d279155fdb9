//! The control plane: Unix sockets in the run directory through which the
//! `/vm/*` helpers and QMP clients reach the VM. Runs on its own thread
//! (`control`): one epoll loop for every socket, which never waits for
//! the VMM. It reaches the VMM only through `api`: commands out, events
//! and the shared status in, typed console input through a socket.

pub mod hmp;
pub mod monitor;
pub mod outbox;
pub mod qmp;
pub mod qmp_commands;
pub mod rundir;
pub mod screendump;
pub mod serial;
pub mod vnc;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use serde_json::{json, Value};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::SharedBlockDevices;
use crate::api::{keys, Command, CommandSender, Event, EventReceiver, SharedStatus, Status};
use crate::spec::config::CpuTopology;

/// What the control plane may know of and ask of the VM.
pub struct VmControl {
    pub name: String,
    pub uuid: String,
    pub topology: CpuTopology,
    pub status: SharedStatus,
    pub commands: CommandSender,
    pub block_devices: SharedBlockDevices,
    /// Hears every event the VM reports (the cluster status reporter).
    pub observer: Option<crate::api::Observer>,
    /// The VM's screen, when it has one.
    pub display: Option<Arc<crate::api::display::Framebuffer>>,
    /// Where QMP's `input-send-event` left the pointer.
    pub pointer: std::sync::Mutex<crate::api::display::PointerEvent>,
}

/// One change QMP `input-send-event` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputChange {
    Key(crate::api::KeyEvent),
    /// A pointer button (bit as in [`crate::api::display::PointerEvent`]).
    Button {
        bit: u8,
        down: bool,
    },
    /// An absolute position, 0..=0x7fff.
    X(u16),
    Y(u16),
}

/// A command's answer: now, or once the VM has reached a status.
pub type Wait = Option<Status>;

impl VmControl {
    fn ask(&self, command: Command) {
        // The VMM is gone only when the VM has ended; nothing to do then.
        self.commands.send(command);
    }

    /// Pauses the vCPUs; the answer waits for the VM to be paused.
    pub fn pause(&self) -> Result<Wait, String> {
        match self.status.get() {
            Status::Running => {
                self.ask(Command::Pause);
                Ok(Some(Status::Paused))
            }
            Status::Paused => Ok(None),
            other => Err(format!(
                "the VM is {}; it cannot be paused",
                other.qemu_name()
            )),
        }
    }

    /// Resumes the vCPUs; the answer waits for the VM to be running.
    pub fn resume(&self) -> Result<Wait, String> {
        match self.status.get() {
            Status::Paused => {
                self.ask(Command::Resume);
                Ok(Some(Status::Running))
            }
            Status::Running => Ok(None),
            other => Err(format!(
                "the VM is {}; it cannot be resumed",
                other.qemu_name()
            )),
        }
    }

    pub fn reset(&self) {
        self.ask(Command::Reset);
    }

    pub fn powerdown(&self) {
        self.ask(Command::Powerdown);
    }

    pub fn quit(&self) {
        self.ask(Command::Quit);
    }

    /// Presses the named keys together (qcodes) and lets them go.
    pub fn send_keys(&self, qcodes: &[&str]) -> Result<(), String> {
        self.ask(Command::Keys(keys::chord(qcodes)?));
        Ok(())
    }

    /// Writes the screen to `path` (QMP and HMP `screendump`).
    pub fn screendump(&self, path: &str, format: screendump::Format) -> Result<(), String> {
        let display = self
            .display
            .as_ref()
            .ok_or("the VM has no display (its definition sets autoattachGraphicsDevice: false)")?;
        screendump::write(display, path, format)
    }

    /// Keys and pointer changes in order, as QMP `input-send-event`
    /// describes them; the pointer keeps its place between calls.
    pub fn send_input(&self, events: Vec<InputChange>) {
        let mut pointer = self.pointer.lock().unwrap_or_else(|p| p.into_inner());
        let mut moved = false;
        for event in events {
            match event {
                InputChange::Key(key) => {
                    if moved {
                        self.ask(Command::Pointer(*pointer));
                        moved = false;
                    }
                    self.ask(Command::Keys(vec![key]));
                }
                InputChange::Button { bit, down } => {
                    // Each press and release is its own event, so that a
                    // click in one call is still a click.
                    if down {
                        pointer.buttons |= bit;
                    } else {
                        pointer.buttons &= !bit;
                    }
                    self.ask(Command::Pointer(*pointer));
                    moved = false;
                }
                InputChange::X(x) => {
                    pointer.x = x;
                    moved = true;
                }
                InputChange::Y(y) => {
                    pointer.y = y;
                    moved = true;
                }
            }
        }
        if moved {
            self.ask(Command::Pointer(*pointer));
        }
    }

    /// `query-block`: one entry per disk, in QEMU's shape.
    pub fn block(&self) -> Vec<Value> {
        self.block_devices
            .get()
            .iter()
            .map(|disk| {
                let mut image = json!({
                    "filename": disk.file,
                    "format": disk.format,
                    "virtual-size": disk.size_bytes,
                });
                let mut inserted = json!({
                    "file": disk.file,
                    "ro": disk.readonly,
                    "drv": disk.format,
                    "encrypted": false,
                    "detect_zeroes": "off",
                });
                if let Some(backing) = &disk.backing_file {
                    image["backing-filename"] = json!(backing);
                    inserted["backing_file"] = json!(backing);
                    inserted["backing_file_depth"] = json!(1);
                }
                inserted["image"] = image;
                json!({
                    "device": disk.name,
                    "qdev": format!("/machine/peripheral/{}/virtio-backend", disk.name),
                    "locked": false,
                    "removable": false,
                    "type": "unknown",
                    "inserted": inserted,
                })
            })
            .collect()
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
    /// `vnc.sock`, when the VM has a display.
    pub vnc: Option<UnixListener>,
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

    /// The VM reached `status`: answers a command that waited for it.
    fn on_status(&mut self, status: Status, vm: &VmControl) {
        match self {
            Client::Qmp(client) => client.on_status(status, vm),
            Client::Monitor(client) => client.on_status(status, vm),
        }
    }
}

pub struct ControlLoop {
    epoll: Arc<Epoll>,
    serial: serial::SerialServer,
    hub: Arc<serial::SerialHub>,
    listeners: Listeners,
    clients: Vec<(u64, Client)>,
    next_client: u64,
    events: EventReceiver,
    vm: VmControl,
    ready_pattern: Option<String>,
    vnc: Option<vnc::VncServer>,
}

impl ControlLoop {
    pub fn new(
        epoll: Arc<Epoll>,
        serial: serial::SerialServer,
        hub: Arc<serial::SerialHub>,
        mut listeners: Listeners,
        events: EventReceiver,
        vm: VmControl,
        ready_pattern: Option<String>,
    ) -> std::io::Result<Self> {
        let readable = |data| EpollEvent::new(EventSet::IN, data);
        for (fd, token) in [
            (listeners.qmp.as_raw_fd(), QMP_LISTENER),
            (listeners.monitor.as_raw_fd(), MONITOR_LISTENER),
            (listeners.ready.as_raw_fd(), READY_LISTENER),
            (events.as_raw_fd(), EVENTS),
        ] {
            epoll.ctl(ControlOperation::Add, fd, readable(token))?;
        }
        let vnc = match (listeners.vnc.take(), &vm.display) {
            (Some(listener), Some(display)) => {
                let server = vnc::VncServer::new(listener, display.clone(), &vm.name)?;
                server.register(&epoll)?;
                Some(server)
            }
            _ => None,
        };
        Ok(ControlLoop {
            epoll,
            serial,
            hub,
            listeners,
            clients: Vec::new(),
            next_client: 0,
            events,
            vm,
            ready_pattern,
            vnc,
        })
    }

    /// Serves every socket until `stop` is signalled; then passes on the
    /// VMM's last events (SHUTDOWN, sent before the stop) and what clients
    /// still have to receive, as far as their sockets take it.
    pub fn run(&mut self, stop: &EventFd) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if events[..count].iter().any(|event| event.data() == STOP) {
                self.broadcast_events();
                self.serial.after_events();
                self.flush_clients();
                return Ok(());
            }
            for event in &events[..count] {
                match event.data() {
                    STOP => {}
                    QMP_LISTENER => self.accept(false),
                    MONITOR_LISTENER => self.accept(true),
                    READY_LISTENER => self.answer_readiness(),
                    EVENTS => self.broadcast_events(),
                    token if vnc::VncServer::owns(token) => {
                        if let Some(vnc) = &mut self.vnc {
                            vnc.handle(token, &self.epoll, &self.vm.commands);
                        }
                    }
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
        let client = &mut self.clients[index].1;
        let alive = client.on_readable(&self.vm);
        // Answers go out at once (for a client that is leaving, as far as
        // its socket takes them), not after the other ready clients' turn.
        let delivered = client.outbox().flush();
        if alive && delivered {
            return;
        }
        let (_, mut client) = self.clients.remove(index);
        let fd = client.outbox().stream.as_raw_fd();
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// `/vm/ready`: one line, then the connection closes.
    fn answer_readiness(&mut self) {
        while let Ok((mut stream, _)) = self.listeners.ready.accept() {
            let pattern_seen = self
                .hub
                .ready_seen()
                .load(std::sync::atomic::Ordering::SeqCst);
            let answer = match (self.vm.status.get(), &self.ready_pattern) {
                (Status::Running, _) if pattern_seen => "ready\n".to_owned(),
                (Status::Running, Some(pattern)) => {
                    format!("not ready: {pattern:?} has not appeared on the serial console\n")
                }
                (status, _) => format!("not ready: the VM is {}\n", status.qemu_name()),
            };
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    }

    /// Passes the VMM's events to QMP clients, and answers the commands
    /// that waited for the status an event says the VM has reached.
    fn broadcast_events(&mut self) {
        for event in self.events.drain() {
            if let Some(observer) = &self.vm.observer {
                observer(&event.event);
            }
            if event.event == Event::Reset {
                // The new boot must show the ready pattern again.
                self.hub.forget_ready_pattern();
            }
            for (_, client) in &mut self.clients {
                if let Client::Qmp(client) = client {
                    client.send_event(&event);
                }
            }
            if let Some(status) = event.event.status_reached() {
                for (_, client) in &mut self.clients {
                    client.on_status(status, &self.vm);
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
