//! The VMM: one linear builder from a [`VmConfig`] to a running KVM VM,
//! and the lifecycle loop around it. A guest poweroff ends the run; a guest
//! reset (ACPI reset register, i8042, triple fault) rebuilds the VM in the
//! same process: memory cleared, kernel reloaded, vCPUs restarted, devices
//! and the console kept.
//!
//! Runs on the caller's thread; vCPUs on their own threads (`vcpu`).

pub mod acpi;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod host;
pub mod layout;
pub mod memory;
pub mod termination;
pub mod vcpu;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::control::rundir::{RunDir, MONITOR_SOCKET, QMP_SOCKET, READY_SOCKET, SERIAL_SOCKET};
use crate::control::serial::{HubWriter, SerialHub, SerialServer};
use crate::control::{ControlLoop, Listeners, Readiness, VmControl};
use crate::devices::bus::Bus;
use crate::devices::ged::{GenericEventDevice, GED_REGISTER_SIZE};
use crate::devices::legacy::{acpi_pm::AcpiPlatform, i8042::I8042, serial::SerialPort};
use crate::devices::VmRequest;
use crate::lifecycle;
use crate::lifecycle::{Event, EventSender, SharedStatus, Status};
use crate::spec::VmConfig;
use vmm_sys_util::epoll::Epoll;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiTooLarge),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    RunDir(#[from] crate::control::rundir::RunDirError),
    #[error("device layout: {0}")]
    Layout(#[from] crate::devices::bus::OverlapError),
    #[error("the VM stopped: {0}")]
    Fatal(String),
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// The annotation naming text that must appear before `/vm/ready` is ready.
pub const READY_PATTERN_ANNOTATION: &str = "vmpod.io/ready-serial-pattern";

/// How `vmpod launch` serves the VM, beside its definition.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Where the control sockets go (`/vm/run` in a pod).
    pub run_dir: std::path::PathBuf,
    /// Bytes of serial output replayed to a client when it attaches.
    pub serial_scrollback: usize,
    /// How far a serial client may fall behind before it is detached.
    pub serial_client_backlog: usize,
}

/// How a run ended, when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    Poweroff,
    /// The guest was stopped after this signal because it did not power off.
    ForcedStop(u32),
}

/// Devices that live as long as the process, across guest resets.
struct Platform {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialPort>>,
    serial_interrupt: EventFd,
    ged: Arc<Mutex<GenericEventDevice>>,
    ged_interrupt: EventFd,
    hub: Arc<SerialHub>,
    i8042: Arc<Mutex<I8042>>,
    keyboard_interrupt: EventFd,
}

fn build_platform(
    requests: &mpsc::Sender<VmRequest>,
    hub: &Arc<SerialHub>,
) -> Result<Platform, VmmError> {
    let serial_interrupt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create the serial interrupt"))?;
    let serial_trigger = serial_interrupt
        .try_clone()
        .map_err(io_error("create the serial interrupt"))?;
    let output = HubWriter::new(hub.clone(), Box::new(console::ConsoleOutput));
    let serial = Arc::new(Mutex::new(SerialPort::new(
        serial_trigger,
        Box::new(output),
    )));
    let mut pio = Bus::default();
    pio.insert(u64::from(layout::COM1_PORT), 8, serial.clone())?;
    let keyboard_interrupt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create the keyboard interrupt"))?;
    let keyboard_trigger = keyboard_interrupt
        .try_clone()
        .map_err(io_error("create the keyboard interrupt"))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(requests.clone(), keyboard_trigger)));
    pio.insert(u64::from(layout::I8042_PORT), 5, i8042.clone())?;
    let acpi_platform = AcpiPlatform::new(
        layout::S5_SLEEP_TYPE,
        layout::ACPI_RESET_VALUE,
        requests.clone(),
    );
    pio.insert(
        u64::from(layout::ACPI_PM_PORT),
        3,
        Arc::new(Mutex::new(acpi_platform)),
    )?;
    let ged_interrupt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create the GED interrupt"))?;
    let ged_trigger = ged_interrupt
        .try_clone()
        .map_err(io_error("create the GED interrupt"))?;
    let ged = Arc::new(Mutex::new(GenericEventDevice::new(ged_trigger)));
    let mut mmio = Bus::default();
    mmio.insert(layout::GED_ADDR, GED_REGISTER_SIZE, ged.clone())?;
    Ok(Platform {
        pio,
        mmio,
        serial,
        serial_interrupt,
        ged,
        ged_interrupt,
        hub: hub.clone(),
        i8042,
        keyboard_interrupt,
    })
}

/// Boots `config` and runs it until the guest powers off or fails.
pub fn run(config: &VmConfig, options: &LaunchOptions) -> Result<Outcome, VmmError> {
    // Before any thread starts, so that every thread inherits the mask.
    let termination_signals = crate::signals::SignalFd::take(&termination::TERMINATION_SIGNALS)
        .map_err(io_error("take SIGTERM and SIGINT"))?;
    let kvm = host::open_kvm()?;
    host::warn_if_pvm();
    warn_about_unbuilt_devices(config);
    host::check_memory(
        config.memory_bytes,
        host::container_memory_limit(),
        host::host_memory_total(),
    )?;
    vcpu::install_kick_handler().map_err(io_error("install the vCPU kick signal handler"))?;
    let run_dir = RunDir::create(&options.run_dir)?;
    run_dir.link_helpers();
    let serial_listener = run_dir.listen(SERIAL_SOCKET)?;
    let listeners = Listeners {
        qmp: run_dir.listen(QMP_SOCKET)?,
        monitor: run_dir.listen(MONITOR_SOCKET)?,
        ready: run_dir.listen(READY_SOCKET)?,
    };
    let guest_memory = memory::create(config.memory_bytes)?;
    let (request_sender, requests) = mpsc::channel();
    let ready_pattern = config
        .annotations
        .get(READY_PATTERN_ANNOTATION)
        .map(String::as_str);
    let hub = SerialHub::new(
        options.serial_scrollback,
        options.serial_client_backlog,
        ready_pattern,
    )
    .map_err(io_error("create the serial console hub"))?;
    let platform = build_platform(&request_sender, &hub)?;
    let (events, event_receiver) =
        lifecycle::event_channel().map_err(io_error("create the event channel"))?;
    let lifecycle = Lifecycle {
        status: SharedStatus::default(),
        events,
    };
    let vm_control = VmControl {
        name: config.identity.name.clone(),
        uuid: config.identity.uuid.to_string(),
        topology: config.cpu,
        status: lifecycle.status.clone(),
        requests: request_sender.clone(),
    };
    let epoll = Arc::new(Epoll::new().map_err(io_error("create the control event loop"))?);
    let serial_server = SerialServer::new(
        hub.clone(),
        platform.serial.clone(),
        serial_listener,
        epoll.clone(),
    )
    .map_err(io_error("serve the serial console"))?;
    let readiness = Readiness {
        pattern_seen: hub.ready_seen(),
        pattern: ready_pattern.map(str::to_owned),
    };
    let control_loop = ControlLoop::new(
        epoll,
        serial_server,
        listeners,
        event_receiver,
        vm_control,
        readiness,
    )
    .map_err(io_error("serve the control sockets"))?;
    let control = ControlThread::start(control_loop)?;
    let watcher = termination::TerminationWatcher::start(
        termination_signals,
        request_sender.clone(),
        config.termination_grace_period_seconds,
    )
    .map_err(io_error("start the signals thread"))?;
    let _terminal = console::TerminalMode::character_mode();
    let input = console::ConsoleInput::start(platform.serial.clone())
        .map_err(io_error("start the serial input thread"))?;
    let outcome = run_boots(
        &kvm,
        config,
        &guest_memory,
        &platform,
        &request_sender,
        &requests,
        &lifecycle,
    );
    input.stop();
    watcher.stop();
    control.stop();
    for socket in [SERIAL_SOCKET, QMP_SOCKET, MONITOR_SOCKET, READY_SOCKET] {
        run_dir.remove_socket(socket);
    }
    outcome
}

/// Says which parts of the definition this vmpod cannot give the guest yet
/// (rather than dropping them silently).
fn warn_about_unbuilt_devices(config: &VmConfig) {
    let mut missing = Vec::new();
    if !config.disks.is_empty() {
        missing.push(format!("{} disk(s)", config.disks.len()));
    }
    if !config.nics.is_empty() {
        missing.push(format!("{} NIC(s)", config.nics.len()));
    }
    if config.rng {
        missing.push("the rng device".into());
    }
    if !config.inputs.is_empty() {
        missing.push("input devices".into());
    }
    if config.graphics {
        missing.push("the graphics device".into());
    }
    if !missing.is_empty() {
        log::warn!(
            "this vmpod does not build virtio devices or a display yet: the guest will not see {}",
            missing.join(", ")
        );
    }
}

/// The `control` thread serving the sockets, stopped through an eventfd.
struct ControlThread {
    stop: EventFd,
    thread: std::thread::JoinHandle<()>,
}

impl ControlThread {
    fn start(mut control: ControlLoop) -> Result<Self, VmmError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("create the control stop event"))?;
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

/// What the control plane sees of the VM: its status and its events.
pub struct Lifecycle {
    pub status: SharedStatus,
    pub events: EventSender,
}

fn run_boots(
    kvm: &Kvm,
    config: &VmConfig,
    guest_memory: &GuestMemoryMmap,
    platform: &Platform,
    request_sender: &mpsc::Sender<VmRequest>,
    requests: &Receiver<VmRequest>,
    lifecycle: &Lifecycle,
) -> Result<Outcome, VmmError> {
    for boot_number in 1u64.. {
        let shared = Arc::new(vcpu::VcpuShared::new(
            platform.pio.clone(),
            platform.mmio.clone(),
            request_sender.clone(),
        ));
        let (vm, threads) = start(
            kvm,
            config,
            guest_memory,
            platform,
            shared,
            boot_number == 1,
        )?;
        lifecycle.status.set(Status::Running);
        let ending = serve_boot(&threads, platform, requests, lifecycle);
        log::debug!("{ending:?}: stopping the vCPUs");
        threads.stop();
        drop(vm);
        while requests.try_recv().is_ok() {} // other vCPUs may have said the same
        match ending {
            VmRequest::Poweroff => {
                log::info!("the guest powered off");
                return finish(lifecycle, Outcome::Poweroff);
            }
            VmRequest::Quit => {
                log::info!("stopped by a quit command");
                return finish(lifecycle, Outcome::Poweroff);
            }
            VmRequest::ForcedStop(signal) => return finish(lifecycle, Outcome::ForcedStop(signal)),
            VmRequest::Reset(reason) => {
                log::info!(
                    "the guest reset ({reason}): booting it again in this process (boot {})",
                    boot_number + 1
                );
                lifecycle.events.send(Event::Reset);
                platform.hub.forget_ready_pattern();
                memory::clear(guest_memory)?;
            }
            VmRequest::Fatal(message) => {
                lifecycle.status.set(Status::Shutdown);
                return Err(VmmError::Fatal(message));
            }
            other => {
                return Err(VmmError::Fatal(format!(
                    "unexpected end of a boot: {other:?}"
                )))
            }
        }
    }
    unreachable!("boot numbers do not run out")
}

fn finish(lifecycle: &Lifecycle, outcome: Outcome) -> Result<Outcome, VmmError> {
    lifecycle.status.set(Status::Shutdown);
    lifecycle.events.send(Event::Shutdown);
    Ok(outcome)
}

/// Serves requests during one boot; returns the one that ends it.
fn serve_boot(
    threads: &vcpu::VcpuThreads,
    platform: &Platform,
    requests: &Receiver<VmRequest>,
    lifecycle: &Lifecycle,
) -> VmRequest {
    loop {
        // We hold a sender ourselves, so this only returns with a request.
        let request = match requests.recv() {
            Ok(request) => request,
            Err(_) => return VmRequest::Fatal("request channel closed".into()),
        };
        match request {
            VmRequest::Pause if lifecycle.status.get() == Status::Running => {
                threads.pause();
                lifecycle.status.set(Status::Paused);
                lifecycle.events.send(Event::Stop);
            }
            VmRequest::Resume if lifecycle.status.get() == Status::Paused => {
                threads.resume();
                lifecycle.status.set(Status::Running);
                lifecycle.events.send(Event::Resume);
            }
            VmRequest::Pause | VmRequest::Resume => {} // already so
            VmRequest::Powerdown => {
                let mut ged = platform.ged.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(error) = ged.press_power_button() {
                    log::error!("could not press the power button: {error}");
                }
                lifecycle.events.send(Event::Powerdown);
            }
            VmRequest::SendKeys(scancodes) => {
                platform
                    .i8042
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .press(&scancodes);
            }
            ending => return ending,
        }
    }
}

/// Builds the KVM VM for one boot and starts its vCPUs.
fn start(
    kvm: &Kvm,
    config: &VmConfig,
    guest_memory: &GuestMemoryMmap,
    platform: &Platform,
    shared: Arc<vcpu::VcpuShared>,
    first_boot: bool,
) -> Result<(VmFd, vcpu::VcpuThreads), VmmError> {
    let vm = kvm.create_vm().map_err(kvm_error("create a VM"))?;
    // Memory first: a memslot change waits for an SRCU grace period, which
    // costs milliseconds once the in-kernel irqchip and PIT exist.
    register_memory(&vm, guest_memory)?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_error("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_error("set the identity map address"))?;
    vm.create_irq_chip()
        .map_err(kvm_error("create the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_error("create the PIT"))?;
    vm.register_irqfd(&platform.serial_interrupt, layout::COM1_IRQ)
        .map_err(kvm_error("wire the serial interrupt"))?;
    vm.register_irqfd(&platform.ged_interrupt, layout::GED_IRQ)
        .map_err(kvm_error("wire the power button interrupt"))?;
    vm.register_irqfd(&platform.keyboard_interrupt, layout::KEYBOARD_IRQ)
        .map_err(kvm_error("wire the keyboard interrupt"))?;

    let apic_ids = cpu::apic_ids(&config.cpu);
    let tables = acpi::build(&acpi::AcpiFacts {
        apic_ids: &apic_ids,
    })?;
    boot::write_acpi(guest_memory, &tables)?;
    boot::write_reset_vector(guest_memory)?;
    cpu::write_boot_tables(guest_memory)?;
    let entry = boot::load(
        guest_memory,
        &boot::BootSpec {
            kernel: &config.boot.kernel,
            initrd: config.boot.initrd.as_deref(),
            cmdline: &config.boot.cmdline,
            memory_bytes: config.memory_bytes,
            rsdp_address: tables.rsdp_address,
        },
    )?;
    let vcpus = create_vcpus(kvm, &vm, config, &apic_ids, entry, first_boot)?;
    let threads = vcpu::spawn(vcpus, shared).map_err(io_error("start the vCPU threads"))?;
    Ok((vm, threads))
}

fn register_memory(vm: &VmFd, guest_memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in guest_memory.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmmError::Fatal("guest memory region without a host mapping".into()))?;
        let region_spec = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // The VM is dropped before guest memory is cleared or unmapped.
        // SAFETY: the region is a live mapping owned by `guest_memory`, which outlives the VM.
        unsafe { vm.set_user_memory_region(region_spec) }.map_err(kvm_error("map guest memory"))?;
    }
    Ok(())
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    apic_ids: &[u32],
    entry: boot::Entry,
    first_boot: bool,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_error("report its CPUID"))?;
    let mut vcpus = Vec::with_capacity(apic_ids.len());
    for (index, apic_id) in apic_ids.iter().enumerate() {
        let index = index as u32;
        // KVM makes the vCPU id the APIC id; vCPU 0 is the boot processor,
        // the others wait for INIT/SIPI from the guest.
        let vcpu = vm
            .create_vcpu(u64::from(*apic_id))
            .map_err(kvm_error("create a vCPU"))?;
        cpu::set_cpuid(
            &vcpu,
            index,
            &cpu::vcpu_cpuid(&supported, &config.cpu, *apic_id),
        )?;
        let refused = cpu::set_boot_msrs(&vcpu);
        if first_boot && index == 0 && !refused.is_empty() {
            let list: Vec<String> = refused.iter().map(|msr| format!("{msr:#x}")).collect();
            log::info!(
                "this host's KVM refused MSRs {}; vmpod left them at KVM's defaults",
                list.join(", ")
            );
        }
        cpu::set_fpu(&vcpu, index)?;
        cpu::set_lint_pins(&vcpu, index)?;
        if index == 0 {
            cpu::set_boot_registers(&vcpu, index, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
