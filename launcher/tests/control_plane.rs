//! The control plane on its own thread, with the test playing the VMM:
//! commands arrive on the channel the VMM would read, and the test sends
//! the events the VMM would send. Shows that a client waiting for the VM
//! (QMP `stop`) holds back nobody else.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use vmpod::api::{self, Command, Event, SharedStatus, Status, Timed};
use vmpod::control::rundir::RunDir;
use vmpod::control::serial::{SerialHub, SerialServer};
use vmpod::control::{ControlLoop, Listeners, VmControl};
use vmpod::spec::config::CpuTopology;

const WATCHDOG: Duration = Duration::from_secs(10);

struct ControlPlane {
    run_dir: std::path::PathBuf,
    commands: api::CommandReceiver,
    events: api::EventSender,
    status: SharedStatus,
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    fn start(test: &str) -> Self {
        let run_dir = std::env::temp_dir().join(format!("vmpod-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        let dir = RunDir::create(&run_dir).expect("run dir");
        let listeners = Listeners {
            qmp: dir.listen(api::QMP_SOCKET).expect("listen"),
            monitor: dir.listen(api::MONITOR_SOCKET).expect("listen"),
            ready: dir.listen(api::READY_SOCKET).expect("listen"),
        };
        let (command_sender, commands) = api::channel().expect("channel");
        let (events, event_receiver) = api::channel().expect("channel");
        let status = SharedStatus::default();
        status.set(Status::Running);
        let hub = SerialHub::new(1024, 1024, None).expect("hub");
        let (typed, _guest_end) = UnixStream::pair().expect("pair");
        let epoll = Arc::new(Epoll::new().expect("epoll"));
        let serial = SerialServer::new(
            hub.clone(),
            dir.listen(api::SERIAL_SOCKET).expect("listen"),
            typed,
            epoll.clone(),
        )
        .expect("serial server");
        let vm = VmControl {
            observer: None,
            name: "stand-in".into(),
            uuid: "00000000-0000-0000-0000-000000000002".into(),
            topology: CpuTopology {
                sockets: 1,
                cores: 1,
                threads: 1,
            },
            status: status.clone(),
            commands: command_sender,
            block_devices: Default::default(),
        };
        let mut control = ControlLoop::new(epoll, serial, hub, listeners, event_receiver, vm, None)
            .expect("loop");
        let stop = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let thread_stop = stop.try_clone().expect("clone");
        let thread = std::thread::spawn(move || control.run(&thread_stop).expect("control loop"));
        ControlPlane {
            run_dir,
            commands,
            events,
            status,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for the next command the control plane sends the VMM.
    fn next_command(&self) -> Command {
        let mut poll = libc::pollfd {
            fd: self.commands.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, WATCHDOG.as_millis() as i32) };
        assert_eq!(ready, 1, "watchdog: no command reached the VMM");
        self.commands.drain().remove(0)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A negotiated QMP client.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(plane: &ControlPlane) -> Self {
        let stream = UnixStream::connect(plane.run_dir.join(api::QMP_SOCKET)).expect("connect");
        stream.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        let mut qmp = Qmp {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        };
        assert!(qmp.line().starts_with(r#"{"QMP":"#));
        assert_eq!(
            qmp.ask(r#"{"execute":"qmp_capabilities"}"#),
            r#"{"return":{}}"#
        );
        qmp
    }

    fn send(&mut self, command: &str) {
        self.writer.write_all(command.as_bytes()).expect("send");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a reply within the watchdog");
        line.trim_end().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.line()
    }

    /// True when nothing has arrived for this client.
    fn nothing_pending(&mut self) -> bool {
        let stream = self.reader.get_mut();
        stream.set_nonblocking(true).expect("non-blocking");
        let mut byte = [0u8];
        let quiet = matches!(stream.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
        stream.set_nonblocking(false).expect("blocking");
        quiet && self.reader.buffer().is_empty()
    }
}

#[test]
fn a_client_waiting_in_stop_holds_back_nobody_else() {
    let plane = ControlPlane::start("stop-waits");
    let mut stopper = Qmp::connect(&plane);
    stopper.send(r#"{"execute":"stop","id":"stop"}"#);
    assert!(matches!(plane.next_command(), Command::Pause));

    // The VMM has not paused yet: the stopper waits, the bystander does not.
    let mut bystander = Qmp::connect(&plane);
    assert_eq!(
        bystander.ask(r#"{"execute":"query-status","id":1}"#),
        r#"{"id":1,"return":{"running":true,"singlestep":false,"status":"running"}}"#
    );
    assert!(
        stopper.nothing_pending(),
        "stop is answered only once the VM paused"
    );

    plane.status.set(Status::Paused);
    plane.events.send(Timed::now(Event::Stop));
    assert!(stopper.line().contains(r#""event":"STOP""#));
    assert_eq!(stopper.line(), r#"{"id":"stop","return":{}}"#);
    assert!(bystander.line().contains(r#""event":"STOP""#));
}

#[test]
fn a_monitor_waiting_in_stop_prompts_again_once_the_vm_paused() {
    let plane = ControlPlane::start("monitor-stop-waits");
    let stream = UnixStream::connect(plane.run_dir.join(api::MONITOR_SOCKET)).expect("connect");
    stream.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut monitor = BufReader::new(stream);
    let mut until_prompt = || common::until_prompt(&mut monitor);
    until_prompt();
    writer.write_all(b"stop\ninfo status\n").expect("type");
    assert!(matches!(plane.next_command(), Command::Pause));
    plane.status.set(Status::Paused);
    plane.events.send(Timed::now(Event::Stop));
    assert_eq!(until_prompt(), "(vmpod) ");
    assert_eq!(until_prompt(), "VM status: paused\r\n(vmpod) ");
}

#[test]
fn the_last_event_reaches_clients_before_the_control_plane_stops() {
    let mut plane = ControlPlane::start("last-event");
    let mut client = Qmp::connect(&plane);
    client.send(r#"{"execute":"quit","id":"q"}"#);
    assert!(matches!(plane.next_command(), Command::Quit));
    assert_eq!(client.line(), r#"{"id":"q","return":{}}"#);
    // As launch does when the VM has ended: the event, then the stop.
    plane.status.set(Status::Shutdown);
    plane.events.send(Timed::now(Event::Shutdown));
    let _ = plane.stop.write(1);
    if let Some(thread) = plane.thread.take() {
        thread.join().expect("control loop");
    }
    assert!(client.line().contains(r#""event":"SHUTDOWN""#));
}
