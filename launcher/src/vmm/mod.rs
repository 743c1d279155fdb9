//! The VMM: one linear builder from a [`VmConfig`] to a running KVM VM,
//! and the event loop that serves it. A guest poweroff ends the run; a
//! guest reset (ACPI reset register, i8042, triple fault) rebuilds the VM
//! in the same process: memory cleared, kernel reloaded, devices rewired,
//! vCPUs restarted, console and clients kept.
//!
//! Runs on the caller's thread (the VMM thread); vCPUs on their own threads
//! (`vcpu`). Knows nothing of the control plane: it takes commands and
//! gives events through `api`, and is handed what it needs by `launch`.

pub mod acpi;
pub mod boot;
pub mod boot_disk;
pub mod cloud_init;
pub mod console;
pub mod cpu;
pub mod device_manager;
pub mod disks;
pub mod display;
pub mod event_loop;
pub mod host;
pub mod layout;
pub mod memory;
pub mod network;
pub mod platform;
pub mod termination;
pub mod vcpu;
pub mod virtio;

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::api::display::Framebuffer;
use crate::api::{Command, CommandReceiver, CommandSender, Event, EventSender, SharedStatus};
use crate::api::{Status, Timed};
use crate::signals::SignalFd;
use crate::spec::config::Boot;
use crate::spec::VmConfig;
use event_loop::EventLoop;
use platform::Platform;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiTooLarge),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error(transparent)]
    Device(#[from] device_manager::DeviceError),
    #[error(transparent)]
    Disk(#[from] disks::DiskError),
    #[error(transparent)]
    BootDisk(#[from] boot_disk::BootDiskError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
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
    #[error("guest memory at {address:#x} has no host mapping")]
    Unmapped {
        address: u64,
        #[source]
        source: vm_memory::guest_memory::Error,
    },
    #[error("the VM stopped")]
    Guest(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// How a run ended, when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (or a `quit` command ended it).
    Poweroff,
    /// The guest was stopped after this signal because it did not power off.
    ForcedStop(u32),
}

/// What the VMM is handed by whoever composes it.
pub struct VmmIo {
    /// Commands for the VMM, and a sender for its devices and vCPUs.
    pub commands: CommandReceiver,
    pub command_sender: CommandSender,
    /// Where the VMM reports what happened, and its status.
    pub events: EventSender,
    pub status: SharedStatus,
    /// Guest console output also goes here (the serial console's hub).
    pub console_tee: Box<dyn Write + Send>,
    /// Typed console input from the control plane, if any.
    pub typed_input: Option<UnixStream>,
    /// Whether stdin carries typing for the guest (and a terminal on it
    /// goes into character mode).
    pub stdin_input: bool,
    /// Bytes of console output held for stdout while it is not read.
    pub stdout_buffer: usize,
    /// Where emptyDisks are created (an emptyDir in a pod).
    pub scratch_dir: std::path::PathBuf,
    /// Where the VMM lists the disks it attached.
    pub block_devices: crate::api::SharedBlockDevices,
    /// SIGTERM and SIGINT, already blocked in every thread.
    pub termination_signals: SignalFd,
    /// The framebuffer, when the VM has a display; it outlives the VMM.
    pub display: Option<Arc<Framebuffer>>,
}

/// KVM's memory slot for the framebuffer (RAM takes slots 0 and 1).
const FRAMEBUFFER_SLOT: u32 = 8;

/// The VMM's own epoll source: the command channel.
const COMMANDS: u32 = 0;

/// Why a boot ended.
enum Ending {
    Poweroff,
    Quit,
    ForcedStop(u32),
    Reset(&'static str),
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

struct Vmm<'a> {
    kvm: &'a Kvm,
    config: &'a VmConfig,
    guest_memory: Arc<GuestMemoryMmap>,
    platform: Platform,
    /// Virtio transports, reset with the guest.
    virtio: Transports,
    events: EventLoop,
    commands: CommandReceiver,
    command_sender: CommandSender,
    /// Commands taken from the channel or the handlers, not yet applied.
    pending: VecDeque<Command>,
    lifecycle: EventSender,
    status: SharedStatus,
    /// The disk booted from, when the kernel comes from a disk.
    boot_disk: Option<crate::images::Shared>,
    display: Option<Arc<Framebuffer>>,
    /// Where keys and the pointer go.
    inputs: virtio::InputRouter,
}

/// Boots `config` and serves it until the guest powers off or fails.
pub fn run(kvm: &Kvm, config: &VmConfig, io: VmmIo) -> Result<Outcome, VmmError> {
    vcpu::install_kick_handler().map_err(io_error("install the vCPU kick signal handler"))?;
    // Declared first, so dropped last: after every device and vCPU.
    let guest_ram = memory::create(config.memory_bytes)?;
    let guest_memory = guest_ram.shared();
    let output = console::StdoutBuffer::new(io.stdout_buffer)
        .map_err(io_error("create the console output buffer"))?;
    let writer = console::ConsoleWriter::new(output.clone(), io.console_tee);
    let mut platform = platform::build(&io.command_sender, Box::new(writer))?;
    let virtio::Added {
        slots: virtio_slots,
        boot_disk,
        inputs,
    } = virtio::add_devices(
        config,
        &io.scratch_dir,
        &io.block_devices,
        &io.events,
        &mut platform.devices,
        &guest_memory,
    )?;
    let (events, virtio) = event_loop_for(
        &platform,
        output,
        virtio_slots,
        &io.commands,
        io.typed_input,
        io.stdin_input,
        io.termination_signals,
        config.termination_grace_period_seconds,
    )?;
    let _terminal = io.stdin_input.then(console::TerminalMode::character_mode);
    let mut vmm = Vmm {
        kvm,
        config,
        guest_memory,
        platform,
        virtio,
        events,
        commands: io.commands,
        command_sender: io.command_sender,
        pending: VecDeque::new(),
        lifecycle: io.events,
        status: io.status,
        boot_disk,
        display: io.display,
        inputs: virtio::InputRouter::new(inputs),
    };
    let outcome = vmm.run_boots();
    if outcome.is_err() {
        // Clients hear that the VM is gone, whatever ended it.
        vmm.finish(Outcome::Poweroff);
    }
    outcome
}

type Transports = Vec<Arc<std::sync::Mutex<crate::devices::virtio::mmio::MmioTransport>>>;

/// The VMM thread's event loop with everything it waits on: the command
/// channel, the console, the termination signals and every virtio
/// device's queue notifiers. Returns the virtio transports too (they are
/// reset with the guest).
#[allow(clippy::too_many_arguments)] // each is one source the loop watches
fn event_loop_for(
    platform: &Platform,
    output: Arc<console::StdoutBuffer>,
    virtio_slots: Vec<virtio::VirtioSlot>,
    commands: &CommandReceiver,
    typed_input: Option<UnixStream>,
    stdin_input: bool,
    termination_signals: SignalFd,
    grace_seconds: u64,
) -> Result<(EventLoop, Transports), VmmError> {
    let mut events = EventLoop::new().map_err(io_error("create the VMM event loop"))?;
    events
        .watch(commands.as_raw_fd(), COMMANDS)
        .map_err(io_error("watch the command channel"))?;
    let wants_input = platform
        .serial_wants_input
        .try_clone()
        .map_err(io_error("watch the serial port"))?;
    let console = console::Console::new(
        platform.serial.clone(),
        wants_input,
        output,
        typed_input,
        stdin_input,
    );
    events
        .add_handler(Box::new(console))
        .map_err(io_error("watch the console's input and output"))?;
    let termination = termination::Termination::new(termination_signals, grace_seconds)
        .map_err(io_error("create the power-off deadline timer"))?;
    events
        .add_handler(Box::new(termination))
        .map_err(io_error("watch SIGTERM and SIGINT"))?;
    let mut transports = Vec::new();
    for slot in virtio_slots {
        transports.push(slot.transport);
        events
            .add_handler(Box::new(slot.notifiers))
            .map_err(io_error("watch a virtio device's queues"))?;
    }
    Ok((events, transports))
}

/// What is left of the commands queued when a boot ended, for the next
/// boot: everything the control plane and signals asked for (a `quit`
/// already answered, a second SIGTERM), in order; not what the old boot's
/// guest asked for (another vCPU's reset or poweroff), which died with it.
fn carry_over(pending: VecDeque<Command>) -> VecDeque<Command> {
    pending
        .into_iter()
        .filter(|command| {
            let stale = command.is_from_guest();
            if stale {
                log::debug!("dropped with the old boot: {command:?}");
            }
            !stale
        })
        .collect()
}

impl Vmm<'_> {
    fn run_boots(&mut self) -> Result<Outcome, VmmError> {
        for boot_number in 1u64.. {
            let (vm, threads) = self.start(boot_number == 1)?;
            let ending = self.serve_boot(&threads);
            threads.stop();
            drop(vm);
            // The vCPUs are gone, so everything the old boot's guest asked
            // for is in the channel now.
            self.pending.extend(self.commands.drain());
            self.pending = carry_over(std::mem::take(&mut self.pending));
            match ending? {
                Ending::Poweroff => {
                    log::info!("the guest powered off");
                    return Ok(self.finish(Outcome::Poweroff));
                }
                Ending::Quit => {
                    log::info!("stopped by a quit command");
                    return Ok(self.finish(Outcome::Poweroff));
                }
                Ending::ForcedStop(signal) => return Ok(self.finish(Outcome::ForcedStop(signal))),
                Ending::Reset(reason) => {
                    log::info!(
                        "the guest reset ({reason}): booting it again in this process (boot {})",
                        boot_number + 1
                    );
                    self.lifecycle.send(Timed::now(Event::Reset));
                    for transport in &self.virtio {
                        transport.lock().unwrap_or_else(|p| p.into_inner()).reset();
                    }
                    memory::clear(&self.guest_memory)?;
                    if let Some(display) = &self.display {
                        display.clear();
                    }
                }
                Ending::Failed(error) => return Err(VmmError::Guest(error)),
            }
        }
        unreachable!("boot numbers do not run out")
    }

    fn finish(&self, outcome: Outcome) -> Outcome {
        self.status.set(Status::Shutdown);
        self.lifecycle.send(Timed::now(Event::Shutdown));
        outcome
    }

    /// Serves one boot: applies commands as they come and waits on the
    /// event loop in between; returns what ended the boot.
    fn serve_boot(&mut self, threads: &vcpu::VcpuThreads) -> Result<Ending, VmmError> {
        loop {
            while let Some(command) = self.pending.pop_front() {
                if let Some(ending) = self.apply(command, threads) {
                    return Ok(ending);
                }
            }
            let ready = self
                .events
                .wait(&mut self.pending)
                .map_err(io_error("wait for events"))?;
            if ready.contains(&COMMANDS) {
                self.pending.extend(self.commands.drain());
            }
        }
    }

    /// Applies one command; returns how the boot ends if it ends it.
    fn apply(&mut self, command: Command, threads: &vcpu::VcpuThreads) -> Option<Ending> {
        match command {
            Command::Pause if self.status.get() == Status::Running => {
                threads.pause();
                self.status.set(Status::Paused);
                self.lifecycle.send(Timed::now(Event::Stop));
            }
            Command::Resume if self.status.get() == Status::Paused => {
                threads.resume();
                self.status.set(Status::Running);
                self.lifecycle.send(Timed::now(Event::Resume));
            }
            Command::Pause | Command::Resume => {} // already so
            Command::Powerdown => {
                let mut ged = self.platform.ged.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(error) = ged.press_power_button() {
                    log::error!("could not press the power button: {error}");
                }
                self.lifecycle.send(Timed::now(Event::Powerdown));
            }
            Command::Keys(keys) => self.inputs.press(&keys, &self.platform.i8042),
            Command::Pointer(pointer) => self.inputs.point(pointer),
            Command::Reset => return Some(Ending::Reset("a system_reset command")),
            Command::Quit => return Some(Ending::Quit),
            Command::ForcedStop(signal) => return Some(Ending::ForcedStop(signal)),
            Command::GuestPoweroff => return Some(Ending::Poweroff),
            Command::GuestReset(reason) => return Some(Ending::Reset(reason)),
            Command::GuestFailed(error) => return Some(Ending::Failed(error)),
        }
        None
    }

    /// Builds the KVM VM for one boot and starts its vCPUs.
    fn start(&self, first_boot: bool) -> Result<(VmFd, vcpu::VcpuThreads), VmmError> {
        let vm = self.kvm.create_vm().map_err(kvm_error("create a VM"))?;
        // Memory first: a memslot change waits for an SRCU grace period, which
        // costs milliseconds once the in-kernel irqchip and PIT exist.
        register_memory(&vm, &self.guest_memory)?;
        if let Some(display) = &self.display {
            display::register(&vm, display, FRAMEBUFFER_SLOT)?;
        }
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
        self.platform.devices.attach(&vm)?;

        let config = self.config;
        let apic_ids = config.cpu.apic_ids();
        let devices = self.platform.devices.acpi_devices();
        let tables = acpi::build(&acpi::AcpiFacts {
            apic_ids: &apic_ids,
            devices: &devices,
        })?;
        boot::write_acpi(&self.guest_memory, &tables)?;
        boot::write_reset_vector(&self.guest_memory)?;
        cpu::write_boot_tables(&self.guest_memory)?;
        let staged = match &config.boot {
            Boot::Disk(disk) => Some(boot_disk::stage(
                self.boot_disk.as_ref(),
                &disk.disk,
                config.memory_bytes,
            )?),
            Boot::Kernel(_) => None,
        };
        let (kernel, initrd, cmdline) = match (&config.boot, &staged) {
            (_, Some(staged)) => (
                boot::BootFile::Staged {
                    name: &staged.kernel_name,
                    file: &staged.kernel,
                },
                staged.initrd.as_ref().map(|file| boot::BootFile::Staged {
                    name: &staged.initrd_name,
                    file,
                }),
                staged.cmdline.as_str(),
            ),
            (Boot::Kernel(kernel), None) => (
                boot::BootFile::Path(&kernel.kernel),
                kernel.initrd.as_deref().map(boot::BootFile::Path),
                kernel.cmdline.as_str(),
            ),
            (Boot::Disk(_), None) => unreachable!("a disk boot is staged above"),
        };
        let entry = boot::load(
            &self.guest_memory,
            &boot::BootSpec {
                kernel,
                initrd,
                cmdline,
                memory_bytes: config.memory_bytes,
                rsdp_address: tables.rsdp_address,
                screen: self.display.as_deref().map(display::screen_info),
            },
        )?;
        if let (Some(display), boot::Entry::Pvh { .. }, true) = (&self.display, entry, first_boot) {
            log::info!(
                "display {}x{}: this kernel boots through PVH, which cannot announce a framebuffer; the guest finds it only if it knows it is at {:#x}",
                display.size().width,
                display.size().height,
                layout::FRAMEBUFFER_ADDR
            );
        }
        drop(staged);
        let vcpus = create_vcpus(self.kvm, &vm, config, &apic_ids, entry, first_boot)?;
        let (pio, mmio) = self.platform.devices.buses();
        let shared = Arc::new(vcpu::VcpuShared::new(
            pio,
            mmio,
            self.command_sender.clone(),
        ));
        // Running before the first instruction: a client that saw the guest's
        // output must never be told the VM has not started.
        self.status.set(Status::Running);
        let threads = vcpu::spawn(vcpus, shared).map_err(io_error("start the vCPU threads"))?;
        Ok((vm, threads))
    }
}

fn register_memory(vm: &VmFd, guest_memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in guest_memory.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|source| VmmError::Unmapped {
                address: region.start_addr().0,
                source,
            })?;
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
    let extras = cpu::Extras {
        tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
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
            &cpu::vcpu_cpuid(&supported, &config.cpu, *apic_id, extras),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_carries_commands_over_but_not_the_old_guests_requests() {
        let pending = VecDeque::from([
            Command::GuestReset("ACPI reset register"),
            Command::Quit,
            Command::GuestPoweroff,
            Command::ForcedStop(15),
            Command::Pause,
        ]);
        let kept: Vec<String> = carry_over(pending)
            .iter()
            .map(|command| format!("{command:?}"))
            .collect();
        assert_eq!(kept, ["Quit", "ForcedStop(15)", "Pause"]);
    }
}
