//! The control plane on its own thread, with the test playing the VMM:
//! commands arrive on the channel the VMM would read, and the test sends
//! the events the VMM would send. Shows that a client waiting for the VM
//! (QMP `stop`) holds back nobody else, and that the VNC server serves
//! several viewers while others misbehave.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use vmpod::api::display::{DisplaySize, Framebuffer};
use vmpod::api::{self, Command, Event, SharedStatus, Status, Timed};
use vmpod::control::rundir::RunDir;
use vmpod::control::serial::{SerialHub, SerialServer};
use vmpod::control::{ControlLoop, Listeners, VmControl};
use vmpod::spec::config::CpuTopology;

const WATCHDOG: Duration = Duration::from_secs(10);
const SCREEN: DisplaySize = DisplaySize {
    width: 320,
    height: 200,
};

struct ControlPlane {
    run_dir: std::path::PathBuf,
    /// The screen the VNC server shows (the test draws on it).
    display: Arc<Framebuffer>,
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
            vnc: Some(dir.listen(api::VNC_SOCKET).expect("listen")),
        };
        let display = Arc::new(Framebuffer::new(SCREEN).expect("framebuffer"));
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
            display: Some(display.clone()),
            pointer: Default::default(),
        };
        let mut control = ControlLoop::new(epoll, serial, hub, listeners, event_receiver, vm, None)
            .expect("loop");
        let stop = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let thread_stop = stop.try_clone().expect("clone");
        let thread = std::thread::spawn(move || control.run(&thread_stop).expect("control loop"));
        ControlPlane {
            run_dir,
            display,
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

/// A VNC viewer that speaks RFB 3.8 and asks for Raw pixels.
struct Viewer {
    stream: UnixStream,
}

impl Viewer {
    fn connect(plane: &ControlPlane) -> Self {
        let stream = UnixStream::connect(plane.run_dir.join(api::VNC_SOCKET)).expect("connect");
        stream.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        let mut viewer = Viewer { stream };
        assert_eq!(viewer.read(12), b"RFB 003.008\n");
        viewer.send(b"RFB 003.008\n");
        assert_eq!(viewer.read(2), [1, 1], "security: None");
        viewer.send(&[1]);
        assert_eq!(viewer.read(4), [0; 4], "security result: OK");
        viewer.send(&[1]);
        let init = viewer.read(24);
        assert_eq!(&init[..4], [1, 64, 0, 200], "320x200");
        let name_length = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        assert_eq!(viewer.read(name_length), b"stand-in");
        viewer.send(&[2, 0, 0, 1, 0, 0, 0, 0]); // SetEncodings: Raw
        viewer
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn read(&mut self, count: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; count];
        self.stream
            .read_exact(&mut bytes)
            .expect("bytes within the watchdog");
        bytes
    }

    fn request(&mut self, incremental: bool) {
        self.send(&[3, u8::from(incremental), 0, 0, 0, 0, 1, 64, 0, 200]);
    }

    /// Reads one FramebufferUpdate of Raw rectangles; the pixels of the
    /// first one's top-left corner, and how many rectangles there were.
    fn update(&mut self) -> (u32, u16) {
        let header = self.read(4);
        assert_eq!(header[0], 0, "a FramebufferUpdate");
        let count = u16::from_be_bytes([header[2], header[3]]);
        let mut corner = None;
        for _ in 0..count {
            let rect = self.read(12);
            let width = u16::from_be_bytes([rect[4], rect[5]]) as usize;
            let height = u16::from_be_bytes([rect[6], rect[7]]) as usize;
            assert_eq!(&rect[8..], [0; 4], "Raw");
            let pixels = self.read(width * height * 4);
            // The spare byte is not part of the colour.
            corner.get_or_insert(u32::from_le_bytes(pixels[..4].try_into().unwrap()) & 0x00ff_ffff);
        }
        (corner.unwrap_or_default(), count)
    }

    /// Whether nothing at all arrives within `wait`.
    fn silent_for(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut byte = [0u8];
        let silent = matches!(self.stream.read(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
        self.stream
            .set_read_timeout(Some(WATCHDOG))
            .expect("timeout");
        silent
    }
}

#[test]
fn viewers_share_the_screen_and_an_idle_screen_sends_nothing() {
    let plane = ControlPlane::start("vnc-viewers");
    plane.display.draw(&vec![0x0012_3456; SCREEN.pixels()]);
    let mut first = Viewer::connect(&plane);
    let mut second = Viewer::connect(&plane);
    for viewer in [&mut first, &mut second] {
        viewer.request(false);
        assert_eq!(viewer.update().0, 0x0012_3456);
        viewer.request(true);
    }
    assert!(
        first.silent_for(Duration::from_millis(500)),
        "an idle screen costs nothing"
    );
    plane.display.draw(&[0x00ab_cdef]);
    for viewer in [&mut first, &mut second] {
        let (corner, rectangles) = viewer.update();
        assert_eq!(
            (corner, rectangles),
            (0x00ab_cdef, 1),
            "only the changed tile"
        );
    }
}

#[test]
fn misbehaving_viewers_are_closed_and_hold_back_nobody_else() {
    let plane = ControlPlane::start("vnc-hostile");
    let mut good = Viewer::connect(&plane);
    // Never reads: the screen changes under it many times.
    let mut stuck = Viewer::connect(&plane);
    stuck.request(false);
    for (bytes, why) in [
        (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "not RFB"),
        (
            &[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff][..],
            "two gigabytes of cut text",
        ),
        (
            &[3, 0, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 1][..],
            "an update far off the screen",
        ),
        (&[0x42][..], "an unknown message"),
    ] {
        let mut hostile =
            UnixStream::connect(plane.run_dir.join(api::VNC_SOCKET)).expect("connect");
        hostile.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        if why != "not RFB" {
            let mut greeting = [0u8; 12];
            hostile.read_exact(&mut greeting).expect("greeting");
            hostile
                .write_all(b"RFB 003.008\n\x01\x01")
                .expect("handshake");
        }
        hostile.write_all(bytes).expect("send");
        let mut rest = Vec::new();
        assert!(
            hostile.read_to_end(&mut rest).is_ok(),
            "{why}: closed by the server"
        );
    }
    for round in 0..20u32 {
        plane.display.draw(&vec![round; SCREEN.pixels()]);
        good.request(round > 0);
        stuck.request(true);
        assert_eq!(good.update().0, round, "round {round}");
    }
    drop(stuck);
}
