//! A guest whose virtio drivers are not vmpod's: the `virtio-drivers`
//! crate drives vmpod's virtio-mmio devices. It prints one line per
//! finding on the serial port (COM1), then powers off through the FADT:
//!
//! ```text
//! virtio: device 2 at 0xd0000000
//! blk: capacity 2048 sectors, read-only no
//! blk: sector 0 says "<first 24 bytes>"
//! blk: wrote sector 1
//! rng: 32 bytes, 30 distinct
//! net: mac 02:..., sent an ARP request
//! net: ARP reply from 10.254.0.1 (mac ...)
//! done
//! ```
//!
//! With a display (boot_params' screen_info names an EFI framebuffer) it
//! draws the pattern tests compare (see [`draw`]) and says
//! `display: 1024x768, 32 bits, stride 4096 at 0xc0000000`; with
//! virtio-input devices it then reports their events until Esc is
//! released: `input: vmpod virtio tablet: type 3 code 0 value 16383`.
//!
//! vmpod enters it in 64-bit mode on identity-mapped page tables (the
//! first 4 GiB, which hold the device window) with %rsi = boot_params.

#![no_std]
#![no_main]

extern crate alloc;

use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::string::String;
use alloc::vec::Vec;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::input::VirtIOInput;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Where vmpod puts virtio-mmio windows, and how big each is.
const DEVICE_WINDOW: usize = 0xd000_0000;
const WINDOW_SIZE: usize = 0x1000;
const MAX_DEVICES: usize = 32;
const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"

// The bzImage header (boot protocol 2.15, one setup sector), the unused
// 32-bit entry, and the 64-bit entry: a stack, then guest_main.
core::arch::global_asm!(
    r#"
    .section .setup, "a"
    .org 0x1f1
    .byte 1                     /* setup_sects */
    .word 0                     /* root_flags */
    .long _syssize
    .word 0, 0xffff, 0          /* ram_size, vid_mode, root_dev */
    .word 0xaa55                /* boot_flag */
    .byte 0xeb, 0xfe            /* jump: the real-mode entry, never used */
    .ascii "HdrS"
    .word 0x020f                /* version */
    .long 0                     /* realmode_swtch */
    .word 0, 0                  /* start_sys_seg, kernel_version */
    .byte 0                     /* type_of_loader */
    .byte 0x01                  /* loadflags: LOADED_HIGH */
    .word 0                     /* setup_move_size */
    .long 0x100000              /* code32_start */
    .long 0, 0, 0               /* ramdisk_image, ramdisk_size, bootsect_kludge */
    .word 0                     /* heap_end_ptr */
    .byte 0, 0                  /* ext_loader_ver, ext_loader_type */
    .long 0                     /* cmd_line_ptr */
    .long 0x37ffffff            /* initrd_addr_max */
    .long 0x200000              /* kernel_alignment */
    .byte 0, 0                  /* relocatable_kernel, min_alignment */
    .word 0x0001                /* xloadflags: XLF_KERNEL_64 */
    .long 2047                  /* cmdline_size */
    .long 0                     /* hardware_subarch */
    .quad 0                     /* hardware_subarch_data */
    .long 0, 0                  /* payload_offset, payload_length */
    .quad 0                     /* setup_data */
    .quad 0x100000              /* pref_address */
    .long _init_size            /* init_size */
    .org 0x400

    .section .entry32, "ax"
    .byte 0xfa, 0xf4            /* cli; hlt: the 32-bit entry, never used */

    .section .entry64, "ax"
    .global entry64
entry64:
    lea {stack}(%rip), %rsp
    add $0x10000, %rsp
    mov %rsi, %rdi
    call {main}
1:  hlt
    jmp 1b
    "#,
    stack = sym STACK,
    main = sym guest_main,
    options(att_syntax)
);

#[repr(C, align(16))]
struct Stack([u8; 64 * 1024]);
static mut STACK: Stack = Stack([0; 64 * 1024]);

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to the serial port and ACPI registers vmpod emulates.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value) };
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for byte in text.bytes() {
            outb(0x3f8, byte);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(Serial, $($arg)*);
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("panic: {info}");
    poweroff(0)
}

/// 512 KiB of DMA memory, handed out page by page and never returned.
#[repr(C, align(4096))]
struct Pool([u8; 128 * 4096]);
static mut POOL: Pool = Pool([0; 128 * 4096]);
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// The heap the input driver's buffers and names come from: 256 KiB,
/// handed out in order and never returned.
#[repr(C, align(4096))]
struct Heap([u8; 256 * 1024]);
static mut HEAP: Heap = Heap([0; 256 * 1024]);
static HEAP_USED: AtomicUsize = AtomicUsize::new(0);

struct Bump;

// SAFETY: every allocation is a distinct, suitably aligned range of HEAP.
unsafe impl core::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let base = (&raw mut HEAP.0).cast::<u8>() as usize;
        let mut start = 0;
        let claimed = HEAP_USED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            start = (base + used).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            (end <= 256 * 1024).then_some(end)
        });
        match claimed {
            Ok(_) => (base + start) as *mut u8,
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;

struct IdentityHal;

// SAFETY: guest memory is identity-mapped and the device sees physical
// addresses equal to ours; pool pages are zeroed and handed out once.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let offset = POOL_USED.fetch_add(pages * 4096, Ordering::SeqCst);
        assert!(offset + pages * 4096 <= 128 * 4096, "DMA pool exhausted");
        // SAFETY: within POOL, which nothing else uses.
        let pointer = unsafe { (&raw mut POOL.0).cast::<u8>().add(offset) };
        (
            pointer as PhysAddr,
            NonNull::new(pointer).expect("non-null"),
        )
    }

    unsafe fn dma_dealloc(_: PhysAddr, _: NonNull<u8>, _: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("non-null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_: PhysAddr, _: NonNull<[u8]>, _: BufferDirection) {}
}

/// The FADT's sleep control register gets SLP_TYP 5 | SLP_EN (vmpod's
/// `\_S5_`), found through boot_params' RSDP, then the XSDT.
fn poweroff(boot_params: u64) -> ! {
    if boot_params != 0 {
        // SAFETY: the tables vmpod wrote, identity-mapped.
        unsafe {
            let rsdp = *((boot_params + 0x70) as *const u64);
            let xsdt = *((rsdp + 24) as *const u64);
            let length = *((xsdt + 4) as *const u32) as u64;
            let mut entry = xsdt + 36;
            while entry < xsdt + length {
                let table = *(entry as *const u64);
                if *(table as *const [u8; 4]) == *b"FACP" {
                    let port = *((table + 248) as *const u32) as u16;
                    outb(port, (5 << 2) | 0x20);
                }
                entry += 8;
            }
        }
    }
    loop {
        // SAFETY: halting with interrupts off ends this guest.
        unsafe { core::arch::asm!("cli", "hlt") };
    }
}

/// The framebuffer boot_params' screen_info announces, if any:
/// (base, width, height, stride).
fn screen(boot_params: u64) -> Option<(u64, usize, usize, usize)> {
    if boot_params == 0 {
        return None;
    }
    let at = |offset: u64| boot_params + offset;
    // SAFETY: screen_info, the first 0x40 bytes of boot_params, which
    // vmpod wrote and which is identity-mapped.
    unsafe {
        if *(at(0x0f) as *const u8) != 0x70 {
            return None; // not VIDEO_TYPE_EFI
        }
        let width = usize::from(core::ptr::read_unaligned(at(0x12) as *const u16));
        let height = usize::from(core::ptr::read_unaligned(at(0x14) as *const u16));
        let depth = core::ptr::read_unaligned(at(0x16) as *const u16);
        let low = core::ptr::read_unaligned(at(0x18) as *const u32);
        let stride = usize::from(core::ptr::read_unaligned(at(0x24) as *const u16));
        let high = core::ptr::read_unaligned(at(0x3a) as *const u32);
        let base = u64::from(high) << 32 | u64::from(low);
        say!("display: {width}x{height}, {depth} bits, stride {stride} at {base:#x}");
        (depth == 32).then_some((base, width, height, stride))
    }
}

/// Stores `value` in `count` pixels from `address` (rep stosd: one
/// instruction, however many pixels, even through an emulator).
fn fill(address: u64, count: usize, value: u32) {
    // SAFETY: the caller's range lies inside the framebuffer.
    unsafe {
        core::arch::asm!("rep stosd", inout("rdi") address => _, inout("rcx") count => _, in("eax") value, options(nostack));
    }
}

/// The pattern tests compare: four bands of height/4 rows, red, green,
/// blue, then 64x64 squares, white where (x/64 + y/64) is odd.
fn draw((base, width, height, stride): (u64, usize, usize, usize)) {
    let band = height / 4;
    for y in 0..height {
        let row = base + (y * stride) as u64;
        match y / band.max(1) {
            0 => fill(row, width, 0xff0000),
            1 => fill(row, width, 0x00ff00),
            2 => fill(row, width, 0x0000ff),
            _ => {
                for x in (0..width).step_by(64) {
                    let white = (x / 64 + y / 64) % 2 == 1;
                    fill(row + (x * 4) as u64, 64.min(width - x), if white { 0xffffff } else { 0 });
                }
            }
        }
    }
    say!("display: drew the pattern");
}

type Input = VirtIOInput<IdentityHal, MmioTransport<'static>>;

/// Reports the input devices' events until Esc is released.
fn report_input(mut inputs: Vec<(String, Input)>) {
    say!("input: waiting for events (Esc ends)");
    loop {
        for (name, input) in &mut inputs {
            while let Some(event) = input.pop_pending_event() {
                if event.event_type == 0 {
                    continue; // SYN_REPORT
                }
                say!("input: {name}: type {} code {} value {}", event.event_type, event.code, event.value as i32);
                if event.event_type == 1 && event.code == 1 && event.value == 0 {
                    return;
                }
            }
        }
        core::hint::spin_loop();
    }
}

#[no_mangle]
extern "C" fn guest_main(boot_params: u64) -> ! {
    if let Some(screen) = screen(boot_params) {
        draw(screen);
    }
    let mut inputs = Vec::new();
    for index in 0..MAX_DEVICES {
        let base = DEVICE_WINDOW + index * WINDOW_SIZE;
        // SAFETY: the device window is identity-mapped; a read where no
        // device is answers zero.
        let magic = unsafe { core::ptr::read_volatile(base as *const u32) };
        if magic != MMIO_MAGIC {
            continue;
        }
        let header = NonNull::new(base as *mut VirtIOHeader).expect("non-null");
        // SAFETY: a virtio-mmio header, mapped, used by nothing else.
        let transport = match unsafe { MmioTransport::new(header, WINDOW_SIZE) } {
            Ok(transport) => transport,
            Err(error) => {
                say!("virtio: window {base:#x}: {error:?}");
                continue;
            }
        };
        say!("virtio: device {:?} at {base:#x}", transport.device_type());
        match transport.device_type() {
            DeviceType::Block => block(transport),
            DeviceType::EntropySource => entropy(transport),
            DeviceType::Network => network(transport),
            DeviceType::Input => match Input::new(transport) {
                Ok(mut input) => {
                    let name = input.name().unwrap_or_else(|_| String::from("(no name)"));
                    say!("input: {name}");
                    inputs.push((name, input));
                }
                Err(error) => say!("input: {error:?}"),
            },
            _ => {}
        }
    }
    if !inputs.is_empty() {
        report_input(inputs);
    }
    say!("done");
    poweroff(boot_params)
}

fn block(transport: MmioTransport<'static>) {
    let mut blk = match VirtIOBlk::<IdentityHal, _>::new(transport) {
        Ok(blk) => blk,
        Err(error) => return say!("blk: {error:?}"),
    };
    say!(
        "blk: capacity {} sectors, read-only {}",
        blk.capacity(),
        if blk.readonly() { "yes" } else { "no" }
    );
    let mut sector = [0u8; 512];
    match blk.read_blocks(0, &mut sector) {
        Ok(()) => {
            let text = core::str::from_utf8(&sector[..24]).unwrap_or("(not text)");
            say!("blk: sector 0 says \"{text}\"");
        }
        Err(error) => say!("blk: read: {error:?}"),
    }
    let mut written = [0u8; 512];
    written[..24].copy_from_slice(b"written by virtio-driver");
    match blk.write_blocks(1, &written).and_then(|()| blk.flush()) {
        Ok(()) => say!("blk: wrote sector 1"),
        Err(error) => say!("blk: write: {error:?}"),
    }
    let mut beyond = [0u8; 512];
    match blk.read_blocks(blk.capacity() as usize, &mut beyond) {
        Ok(()) => say!("blk: read beyond the end succeeded"),
        Err(error) => say!("blk: read beyond the end: {error:?}"),
    }
}

fn entropy(transport: MmioTransport<'static>) {
    let mut rng = match VirtIORng::<IdentityHal, _>::new(transport) {
        Ok(rng) => rng,
        Err(error) => return say!("rng: {error:?}"),
    };
    let mut bytes = [0u8; 32];
    match rng.request_entropy(&mut bytes) {
        Ok(count) => {
            let mut seen = [false; 256];
            for byte in &bytes[..count] {
                seen[*byte as usize] = true;
            }
            let distinct = seen.iter().filter(|s| **s).count();
            say!("rng: {count} bytes, {distinct} distinct");
        }
        Err(error) => say!("rng: {error:?}"),
    }
}

/// An ARP request for 10.254.0.1 from 10.254.0.2; passt answers it.
fn network(transport: MmioTransport<'static>) {
    let mut net = match VirtIONetRaw::<IdentityHal, _, 16>::new(transport) {
        Ok(net) => net,
        Err(error) => return say!("net: {error:?}"),
    };
    let mac = net.mac_address();
    // send() puts the virtio-net header in front itself.
    let mut arp = [0u8; 42];
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&mac);
    arp[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp[22..28].copy_from_slice(&mac);
    arp[28..32].copy_from_slice(&[10, 254, 0, 2]);
    arp[38..42].copy_from_slice(&[10, 254, 0, 1]);
    say!(
        "net: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    if let Err(error) = net.send(&arp) {
        return say!("net: send: {error:?}");
    }
    say!("net: sent an ARP request");
    let mut buffer = [0u8; 2048];
    // SAFETY: `buffer` stays alive and untouched until the device used it.
    let token = match unsafe { net.receive_begin(&mut buffer) } {
        Ok(token) => token,
        Err(error) => return say!("net: receive: {error:?}"),
    };
    for _ in 0..20_000_000u32 {
        if net.poll_receive() == Some(token) {
            // SAFETY: the buffer of `token`, now used by the device.
            let (header, length) = match unsafe { net.receive_complete(token, &mut buffer) } {
                Ok(done) => done,
                Err(error) => return say!("net: receive: {error:?}"),
            };
            let reply = &buffer[header..header + length];
            if length >= 42 && reply[12..14] == [0x08, 0x06] && reply[20..22] == [0, 2] {
                say!(
                    "net: ARP reply from {}.{}.{}.{} (mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x})",
                    reply[28], reply[29], reply[30], reply[31],
                    reply[22], reply[23], reply[24], reply[25], reply[26], reply[27]
                );
            } else {
                say!("net: received a {length}-byte frame that is not the reply");
            }
            return;
        }
        core::hint::spin_loop();
    }
    say!("net: no frame came back");
}
