//! The VM's screen from the guest's side: the framebuffer's memory mapped
//! at [`layout::FRAMEBUFFER_ADDR`] as a memory slot of its own (so guest
//! writes cost no exits), and announced to a Linux kernel through
//! `boot_params.screen_info` as an EFI framebuffer, which the stock
//! kernel's efifb driver and fbcon draw on. Kernels booted through PVH
//! get no boot_params; they do not find the display.
//!
//! VMM thread only; the mapping is registered again on every boot.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use linux_loader::loader::bootparam::screen_info;

use super::{kvm_error, layout, VmmError};
use crate::api::display::{Framebuffer, BYTES_PER_PIXEL};

/// `screen_info.orig_video_isVGA` for a framebuffer handed over by EFI.
const VIDEO_TYPE_EFI: u8 = 0x70;
/// `screen_info.capabilities`: `ext_lfb_base` holds the base's upper half.
const VIDEO_CAPABILITY_64BIT_BASE: u32 = 1 << 1;

/// Maps the framebuffer into the guest as memory slot `slot`.
pub fn register(vm: &VmFd, framebuffer: &Framebuffer, slot: u32) -> Result<(), VmmError> {
    let (host, len) = framebuffer.host_mapping();
    let region = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: layout::FRAMEBUFFER_ADDR,
        memory_size: len,
        userspace_addr: host,
        flags: 0,
    };
    // SAFETY: the mapping belongs to `framebuffer`, which launch keeps
    // alive until after the VMM (and with it every VM) is gone.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_error("map the framebuffer"))
}

/// What a Linux kernel reads to find the framebuffer: 32-bit XRGB.
pub fn screen_info(framebuffer: &Framebuffer) -> screen_info {
    let size = framebuffer.size();
    let (_, len) = framebuffer.host_mapping();
    let base = layout::FRAMEBUFFER_ADDR;
    screen_info {
        orig_video_isVGA: VIDEO_TYPE_EFI,
        lfb_width: size.width as u16,
        lfb_height: size.height as u16,
        lfb_depth: (BYTES_PER_PIXEL * 8) as u16,
        lfb_base: base as u32,
        ext_lfb_base: (base >> 32) as u32,
        capabilities: VIDEO_CAPABILITY_64BIT_BASE,
        lfb_size: len as u32,
        lfb_linelength: size.stride() as u16,
        red_size: 8,
        red_pos: 16,
        green_size: 8,
        green_pos: 8,
        blue_size: 8,
        blue_pos: 0,
        rsvd_size: 8,
        rsvd_pos: 24,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::display::DisplaySize;

    #[test]
    fn the_kernel_is_told_an_xrgb_framebuffer_outside_ram() {
        let framebuffer = Framebuffer::new(DisplaySize {
            width: 1280,
            height: 720,
        })
        .expect("mapping");
        let info = screen_info(&framebuffer);
        let (kind, width, height, depth) = (
            info.orig_video_isVGA,
            info.lfb_width,
            info.lfb_height,
            info.lfb_depth,
        );
        assert_eq!((kind, width, height, depth), (0x70, 1280, 720, 32));
        let (line, base, size) = (info.lfb_linelength, info.lfb_base, info.lfb_size);
        assert_eq!(line, 5120);
        assert_eq!(u64::from(base), layout::FRAMEBUFFER_ADDR);
        assert!(u64::from(size) >= 5120 * 720);
        assert!(u64::from(size) <= layout::FRAMEBUFFER_MAX);
        assert_eq!((info.red_pos, info.green_pos, info.blue_pos), (16, 8, 0));
        for (start, len, kind) in super::super::boot::e820_map(8 << 30) {
            let end = start + len;
            let overlaps = start < layout::FRAMEBUFFER_ADDR + u64::from(size)
                && layout::FRAMEBUFFER_ADDR < end;
            assert!(!overlaps, "e820 entry {start:#x}+{len:#x} (type {kind})");
        }
    }
}
