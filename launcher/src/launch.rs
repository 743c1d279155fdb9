//! `vmpod launch`: composes one VM's run from its parts — the host checks,
//! the run directory and its sockets, the `launch.d` hooks, the control
//! plane on its thread, the
//! VMM on this one — wires them together through `api` (commands, events,
//! status, the typed-input socket), and takes everything down again in
//! order when the VM ends. The only module that knows both the VMM and
//! the control plane.
//!
//! Runs on the main thread, which becomes the VMM thread.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, SharedStatus};
use crate::control::rundir::{
    RunDir, MONITOR_SOCKET, QMP_SOCKET, READY_SOCKET, SERIAL_SOCKET, VNC_SOCKET,
};
use crate::control::serial::{HubWriter, SerialHub, SerialServer};
use crate::control::{ControlLoop, Listeners, VmControl};
use crate::signals::SignalFd;
use crate::source::remote::StatusLink;
use crate::spec::VmConfig;
use crate::vmm::{self, host, termination, Outcome, VmmIo};

/// The annotation naming text that must appear before `/vm/ready` is ready.
pub const READY_PATTERN_ANNOTATION: &str = "vmpod.io/ready-serial-pattern";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    RunDir(#[from] crate::control::rundir::RunDirError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Io { what, source }
}

/// How `vmpod launch` serves the VM, beside its definition.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Where the control sockets go (`/vm/run` in a pod).
    pub run_dir: std::path::PathBuf,
    /// Bytes of serial output replayed to a client when it attaches.
    pub serial_scrollback: usize,
    /// How far a serial client may fall behind before it is detached.
    pub serial_client_backlog: usize,
    /// Console output held for a stdout that is not being read.
    pub stdout_buffer: usize,
    /// Where emptyDisks are created (an emptyDir in a pod).
    pub scratch_dir: std::path::PathBuf,
    /// The `launch.d` hooks run before boot (`/etc/vmpod/launch.d`).
    pub hook_dir: std::path::PathBuf,
    /// Where the pod mounts the images the definition names (`/vm/images`).
    pub images_dir: std::path::PathBuf,
}

/// Where emptyDisks go by default.
pub const DEFAULT_SCRATCH_DIR: &str = "/vm/scratch";

/// Boots `config` and serves it until the guest powers off or fails; with
/// `reporter`, the `vmpod-cluster` helper reports the VM's status and
/// Events to the cluster and may ask for a power-down.
pub fn run(
    config: &VmConfig,
    options: &LaunchOptions,
    reporter: Option<StatusLink>,
) -> Result<Outcome, LaunchError> {
    let mut reporter = reporter;
    let outcome = run_reporting(config, options, &mut reporter);
    if let Some(reporter) = reporter {
        match &outcome {
            Ok(Outcome::Poweroff) => reporter.finish("the guest powered off"),
            Ok(Outcome::ForcedStop(signal)) => {
                reporter.finish(&format!("stopped after signal {signal}"))
            }
            Err(error) => reporter.fail(&error.to_string()),
        }
    }
    outcome
}

fn run_reporting(
    config: &VmConfig,
    options: &LaunchOptions,
    reporter: &mut Option<StatusLink>,
) -> Result<Outcome, LaunchError> {
    // Before any thread starts, so that every thread inherits the mask.
    let termination_signals = SignalFd::take(&termination::TERMINATION_SIGNALS)
        .map_err(io_error("take SIGTERM and SIGINT"))?;
    let kvm = host::open_kvm()?;
    host::warn_if_pvm();
    let run_dir = RunDir::create(&options.run_dir)?;
    let mounted = crate::pod::in_image_mounts(config, &options.images_dir, |path| path.is_dir());
    let config = match &mounted {
        Some((located, notes)) => {
            notes.iter().for_each(|note| log::info!("{note}"));
            located
        }
        None => config,
    };
    let hooks = crate::hooks::Hooks {
        dir: &options.hook_dir,
        run_dir: &options.run_dir,
        scratch_dir: &options.scratch_dir,
    };
    let changed = crate::hooks::run(&hooks, config)?;
    let config = changed.as_ref().unwrap_or(config);
    let overhead = match reporter {
        Some(_) => host::VMM_OVERHEAD_BYTES + host::STATUS_HELPER_BYTES,
        None => host::VMM_OVERHEAD_BYTES,
    } + host::display_bytes(config.display);
    host::check_memory(
        config.memory_bytes,
        overhead,
        host::container_memory_limit(),
        host::host_memory_total(),
    )?;
    host::check_cpus(config.cpu.vcpus(), host::container_cpu_limit())?;
    run_dir.link_helpers();
    let serial_listener = run_dir.listen(SERIAL_SOCKET)?;
    let listeners = Listeners {
        qmp: run_dir.listen(QMP_SOCKET)?,
        monitor: run_dir.listen(MONITOR_SOCKET)?,
        ready: run_dir.listen(READY_SOCKET)?,
        vnc: match config.display {
            Some(_) => Some(run_dir.listen(VNC_SOCKET)?),
            None => None,
        },
    };
    let display = match config.display {
        Some(size) => Some(Arc::new(
            api::display::Framebuffer::new(api::display::DisplaySize {
                width: size.width,
                height: size.height,
            })
            .map_err(io_error("map the framebuffer"))?,
        )),
        None => None,
    };

    let (command_sender, commands) =
        api::channel().map_err(io_error("create the command channel"))?;
    let (event_sender, events) = api::channel().map_err(io_error("create the event channel"))?;
    let status = SharedStatus::default();
    if let Some(link) = reporter.as_mut() {
        link.start(command_sender.clone(), status.clone());
    }
    let block_devices = api::SharedBlockDevices::default();
    let ready_pattern = config.annotations.get(READY_PATTERN_ANNOTATION).cloned();
    let hub = SerialHub::new(
        options.serial_scrollback,
        options.serial_client_backlog,
        ready_pattern.as_deref(),
    )
    .map_err(io_error("create the serial console hub"))?;
    let (typed_by_clients, typed_for_guest) =
        UnixStream::pair().map_err(io_error("create the typed-input socket"))?;
    typed_for_guest
        .set_nonblocking(true)
        .map_err(io_error("create the typed-input socket"))?;
    let epoll = Arc::new(Epoll::new().map_err(io_error("create the control event loop"))?);
    let serial_server = SerialServer::new(
        hub.clone(),
        serial_listener,
        typed_by_clients,
        epoll.clone(),
    )
    .map_err(io_error("serve the serial console"))?;
    let vm_control = VmControl {
        name: config.identity.name.clone(),
        uuid: config.identity.uuid.to_string(),
        topology: config.cpu,
        status: status.clone(),
        commands: command_sender.clone(),
        block_devices: block_devices.clone(),
        observer: reporter.as_ref().map(StatusLink::observer),
        display: display.clone(),
        pointer: Default::default(),
    };
    let control_loop = ControlLoop::new(
        epoll,
        serial_server,
        hub.clone(),
        listeners,
        events,
        vm_control,
        ready_pattern,
    )
    .map_err(io_error("serve the control sockets"))?;
    let control = ControlThread::start(control_loop)?;
    match config.display {
        Some(size) => log::info!(
            "serving the console, monitors and the {size} display in {} (/vm/serial, /vm/qmp, /vm/monitor, /vm/vnc, /vm/ready)",
            options.run_dir.display()
        ),
        None => log::info!(
            "serving the console and monitors in {} (/vm/serial, /vm/qmp, /vm/monitor, /vm/ready)",
            options.run_dir.display()
        ),
    }

    let outcome = vmm::run(
        &kvm,
        config,
        VmmIo {
            commands,
            command_sender,
            events: event_sender,
            status,
            console_tee: Box::new(HubWriter(hub)),
            typed_input: Some(typed_for_guest),
            stdin_input: true,
            stdout_buffer: options.stdout_buffer,
            scratch_dir: options.scratch_dir.clone(),
            block_devices,
            termination_signals,
            display,
        },
    );
    control.stop();
    for socket in [
        SERIAL_SOCKET,
        QMP_SOCKET,
        MONITOR_SOCKET,
        READY_SOCKET,
        VNC_SOCKET,
    ] {
        run_dir.remove_socket(socket);
    }
    Ok(outcome?)
}

/// The `control` thread serving the sockets, stopped through an eventfd.
struct ControlThread {
    stop: EventFd,
    thread: std::thread::JoinHandle<()>,
}

impl ControlThread {
    fn start(mut control: ControlLoop) -> Result<Self, LaunchError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(io_error("create the control stop event"))?;
        let thread_stop = stop
            .try_clone()
            .map_err(io_error("create the control stop event"))?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                if let Err(error) = control.run(&thread_stop) {
                    log::error!("the control loop stopped: {error}");
                }
            })
            .map_err(io_error("start the control thread"))?;
        Ok(ControlThread { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.write(1);
        if self.thread.join().is_err() {
            log::error!("the control thread panicked");
        }
    }
}
