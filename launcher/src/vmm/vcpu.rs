//! vCPU threads: one named thread per vCPU (`vcpu0`, …) blocked in
//! KVM_RUN, relaying port and MMIO exits to the buses and lifecycle exits
//! (poweroff, triple fault, KVM errors) to the VMM thread as commands.
//!
//! Stopping is a signal plus `immediate_exit`: the signal handler marks the
//! thread's `kvm_run`, so a KVM_RUN that is just being entered returns at
//! once instead of sleeping in a halted guest.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::api::{Command, CommandSender};
use crate::devices::bus::Bus;

/// Why a vCPU stopped the VM.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_RUN failed on vCPU {vcpu}")]
    Run {
        vcpu: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM stopped vCPU {vcpu} on {why} (suberror {suberror}, guest RIP {rip})")]
    Internal {
        vcpu: usize,
        why: &'static str,
        suberror: u32,
        rip: String,
    },
    #[error("KVM could not enter vCPU {vcpu} (hardware reason {reason:#x}, host CPU {cpu})")]
    FailEntry { vcpu: usize, reason: u64, cpu: u32 },
}

fn failed(error: VcpuError) -> Command {
    Command::GuestFailed(Box::new(error))
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    pub pio: Bus,
    pub mmio: Bus,
    pub commands: CommandSender,
    stop: AtomicBool,
    unhandled_accesses: AtomicU64,
    pause: Mutex<PauseState>,
    pause_changed: Condvar,
}

/// Whether vCPUs should park, and how many are parked or gone.
#[derive(Default)]
struct PauseState {
    paused: bool,
    parked: usize,
    ended: usize,
}

impl VcpuShared {
    pub fn new(pio: Bus, mmio: Bus, commands: CommandSender) -> Self {
        VcpuShared {
            pio,
            mmio,
            commands,
            stop: AtomicBool::new(false),
            unhandled_accesses: AtomicU64::new(0),
            pause: Mutex::new(PauseState::default()),
            pause_changed: Condvar::new(),
        }
    }

    fn pause_state(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.pause
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parks the calling vCPU while the VM is paused (and not stopping).
    fn park_while_paused(&self, vcpu: &VcpuFd) {
        let mut state = self.pause_state();
        if !state.paused {
            return;
        }
        // Tells a kvmclock guest it was paused, not hung (its watchdogs
        // stay quiet); guests without kvmclock make this fail, harmlessly.
        let _ = vcpu.kvmclock_ctrl();
        state.parked += 1;
        self.pause_changed.notify_all();
        while state.paused && !self.stop.load(Ordering::SeqCst) {
            state = self
                .pause_changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.parked -= 1;
    }

    /// Logs the first few accesses nobody answers, then every power of two.
    fn note_unhandled(&self, kind: &str, address: u64, len: usize) {
        let count = self.unhandled_accesses.fetch_add(1, Ordering::Relaxed) + 1;
        if count <= 8 || count.is_power_of_two() {
            log::debug!("guest {kind} at {address:#x} ({len} bytes) has no device (unanswered accesses so far: {count})");
        }
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_signal: i32, _info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // `run` is set by the vCPU loop before KVM_RUN and cleared before the
        // mapping goes away; KVM documents this byte store for this purpose.
        // SAFETY: `run` points at this thread's live, mapped `kvm_run`.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

pub struct VcpuThreads {
    threads: Vec<JoinHandle<()>>,
    shared: Arc<VcpuShared>,
}

pub fn spawn(vcpus: Vec<VcpuFd>, shared: Arc<VcpuShared>) -> std::io::Result<VcpuThreads> {
    let mut threads = Vec::with_capacity(vcpus.len());
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || run(vcpu, index, &thread_shared));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(error) => {
                VcpuThreads { threads, shared }.stop();
                return Err(error);
            }
        }
    }
    Ok(VcpuThreads { threads, shared })
}

impl VcpuThreads {
    fn kick_all(&self) {
        for thread in &self.threads {
            // A thread that already ended cannot be signalled; that is fine.
            let _ = thread.kill(kick_signal());
        }
    }

    /// Stops the guest's vCPUs outside KVM_RUN; returns once all are parked.
    pub fn pause(&self) {
        self.shared.pause_state().paused = true;
        self.kick_all();
        let mut state = self.shared.pause_state();
        while state.parked + state.ended < self.threads.len() {
            state = self
                .shared
                .pause_changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub fn resume(&self) {
        self.shared.pause_state().paused = false;
        self.shared.pause_changed.notify_all();
    }

    /// Kicks every vCPU out of KVM_RUN and joins its thread.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.pause_changed.notify_all();
        for thread in &self.threads {
            // A thread that already ended cannot be signalled; that is fine.
            let _ = thread.kill(kick_signal());
        }
        for thread in self.threads {
            if thread.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }
}

fn run(mut vcpu: VcpuFd, index: usize, shared: &VcpuShared) {
    KVM_RUN.with(|cell| cell.set(vcpu.get_kvm_run() as *mut kvm_run));
    while !shared.stop.load(Ordering::SeqCst) {
        shared.park_while_paused(&vcpu);
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let request = match vcpu.run() {
            Ok(VcpuExit::InternalError) => Some(internal_error(&mut vcpu, index)),
            Ok(VcpuExit::Shutdown) => Some(triple_fault(&vcpu, index)),
            Ok(exit) => handle_exit(exit, index, shared),
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(source) => Some(failed(VcpuError::Run {
                vcpu: index,
                source,
            })),
        };
        if let Some(request) = request {
            // The VMM may already be stopping; then nobody needs to hear it.
            shared.commands.send(request);
            break;
        }
    }
    KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    shared.pause_state().ended += 1;
    shared.pause_changed.notify_all();
}

/// Describes a KVM internal error with what KVM and the registers say.
fn internal_error(vcpu: &mut VcpuFd, index: usize) -> Command {
    // SAFETY: the exit was KVM_EXIT_INTERNAL_ERROR, so KVM filled in `internal`.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let why = match internal.suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "an instruction KVM could not emulate",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "an exception while delivering another",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "an event KVM could not deliver",
        _ => "an internal error",
    };
    let rip = vcpu
        .get_regs()
        .map(|regs| format!("{:#x}", regs.rip))
        .unwrap_or_else(|_| "unknown".into());
    failed(VcpuError::Internal {
        vcpu: index,
        why,
        suberror: internal.suberror,
        rip,
    })
}

/// A triple fault resets the guest, as on real hardware; the log says
/// where the vCPU was, so a guest that crashed (its stack, page tables or
/// IDT gone bad) can be told from one that reset that way on purpose.
/// AMD's KVM puts the vCPU back in its INIT state before it reports the
/// shutdown, so there the registers are lost, and the log says so.
fn triple_fault(vcpu: &VcpuFd, index: usize) -> Command {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) if regs.rip == 0xfff0 && sregs.cs.base == 0xffff_0000 => log::info!(
            "vCPU {index} triple-faulted; KVM reset it before saying so (as on AMD hosts), so where the guest was is not known"
        ),
        (Ok(regs), Ok(sregs)) => log::info!(
            "vCPU {index} triple-faulted at rip {:#x} (rsp {:#x}, cr0 {:#x}, cr2 {:#x}, cr3 {:#x}, cr4 {:#x}, idt {:#x}+{:#x})",
            regs.rip,
            regs.rsp,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.idt.base,
            sregs.idt.limit
        ),
        _ => log::info!("vCPU {index} triple-faulted"),
    }
    Command::GuestReset("triple fault")
}

/// Handles one exit; returns a request when the VM must change state.
fn handle_exit(exit: VcpuExit, index: usize, shared: &VcpuShared) -> Option<Command> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !shared.pio.read(u64::from(port), data) {
                data.fill(0xff);
                shared.note_unhandled("port read", u64::from(port), data.len());
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !shared.pio.write(u64::from(port), data) {
                shared.note_unhandled("port write", u64::from(port), data.len());
            }
        }
        VcpuExit::MmioRead(address, data) => {
            if !shared.mmio.read(address, data) {
                data.fill(0xff);
                shared.note_unhandled("MMIO read", address, data.len());
            }
        }
        VcpuExit::MmioWrite(address, data) => {
            if !shared.mmio.write(address, data) {
                shared.note_unhandled("MMIO write", address, data.len());
            }
        }
        VcpuExit::Hlt => {
            log::debug!("vCPU {index} halted with no interrupt controller to wake it");
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Command::GuestPoweroff,
                _ => Command::GuestReset("system event"),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(failed(VcpuError::FailEntry {
                vcpu: index,
                reason,
                cpu,
            }))
        }
        other => log::debug!("vCPU {index}: ignored exit {other:?}"),
    }
    None
}
