//! The VM's screen as both sides see it: a linear 32-bit framebuffer in
//! memory of its own, which the VMM maps into the guest and the VNC server
//! reads (a read-only view for it), and the pointer events that travel
//! from viewers to the guest.
//!
//! The guest writes the pixels at any time from its vCPUs; readers copy
//! them with volatile reads and may see a frame mid-draw, as a real
//! display controller scanning out does. Any thread.

use vm_memory::{MmapRegion, VolatileMemory};

/// Bytes per pixel: XRGB8888, little-endian (blue in the lowest byte).
pub const BYTES_PER_PIXEL: u32 = 4;
/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

impl DisplaySize {
    /// Bytes of one row (no padding).
    pub fn stride(&self) -> u32 {
        self.width * BYTES_PER_PIXEL
    }

    /// Bytes of the framebuffer, rounded up to whole pages.
    pub fn memory_bytes(&self) -> u64 {
        let bytes = u64::from(self.stride()) * u64::from(self.height);
        bytes.div_ceil(4096) * 4096
    }

    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }
}

impl std::fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// The framebuffer's memory: anonymous, mapped lazily (only the pages the
/// guest draws on become resident), shared by the VMM (which lets the
/// guest map it) and the VNC server (which reads it).
pub struct Framebuffer {
    size: DisplaySize,
    memory: MmapRegion,
}

impl Framebuffer {
    pub fn new(size: DisplaySize) -> std::io::Result<Self> {
        let memory = MmapRegion::new(size.memory_bytes() as usize)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(Framebuffer { size, memory })
    }

    pub fn size(&self) -> DisplaySize {
        self.size
    }

    /// The mapping's host address and length, for KVM's memory slot.
    pub fn host_mapping(&self) -> (u64, u64) {
        (self.memory.as_ptr() as u64, self.memory.size() as u64)
    }

    /// Copies the whole screen into `pixels` (one XRGB word per pixel).
    pub fn snapshot(&self, pixels: &mut Vec<u32>) {
        pixels.resize(self.size.pixels(), 0);
        let bytes = self.size.pixels() * BYTES_PER_PIXEL as usize;
        match self.memory.get_slice(0, bytes) {
            Ok(slice) => slice.copy_to(&mut pixels[..]),
            Err(_) => unreachable!("the mapping holds every pixel"),
        };
    }

    /// Black again, and the pages handed back (a reset of the VM).
    pub fn clear(&self) {
        let (address, len) = self.host_mapping();
        // SAFETY: the range is this object's own private anonymous
        // mapping; MADV_DONTNEED makes it read as zeros again.
        let done = unsafe {
            libc::madvise(
                address as *mut libc::c_void,
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            // Not expected on an anonymous mapping; zero it by hand.
            let zeros = vec![0u32; self.size.pixels()];
            self.draw(&zeros);
        }
    }

    /// Draws pixels, as a guest would (tests and benchmarks).
    pub fn draw(&self, pixels: &[u32]) {
        let count = pixels.len().min(self.size.pixels());
        if let Ok(slice) = self.memory.get_slice(0, count * BYTES_PER_PIXEL as usize) {
            slice.copy_from(&pixels[..count]);
        }
    }
}

/// The pointer: where it is, scaled to 0..=[`POINTER_MAX`] on both axes
/// (an absolute device, so it lines up with the viewer's), and which
/// buttons are down (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PointerEvent {
    pub x: u16,
    pub y: u16,
    pub buttons: u8,
}

/// The absolute range of the pointer axes (what QEMU's tablets use).
pub const POINTER_MAX: u16 = 0x7fff;

impl PointerEvent {
    /// A viewer's pixel position on a screen of `size`, scaled.
    pub fn at_pixel(x: u16, y: u16, buttons: u8, size: DisplaySize) -> Self {
        let scale = |value: u16, extent: u32| -> u16 {
            let last = extent.saturating_sub(1).max(1);
            let value = u32::from(value).min(last);
            (value * u32::from(POINTER_MAX) / last) as u16
        };
        PointerEvent {
            x: scale(x, size.width),
            y: scale(y, size.height),
            buttons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: DisplaySize = DisplaySize {
        width: 320,
        height: 200,
    };
    const XGA: DisplaySize = DisplaySize {
        width: 1024,
        height: 768,
    };

    #[test]
    fn memory_is_whole_pages() {
        assert_eq!(XGA.memory_bytes(), 3 << 20);
        let odd = DisplaySize {
            width: 321,
            height: 201,
        };
        assert_eq!(odd.memory_bytes() % 4096, 0);
        assert!(odd.memory_bytes() >= 321 * 201 * 4);
    }

    #[test]
    fn what_is_drawn_is_what_a_snapshot_sees_until_a_clear() {
        let framebuffer = Framebuffer::new(SMALL).expect("mapping");
        let mut seen = Vec::new();
        framebuffer.snapshot(&mut seen);
        assert!(seen.iter().all(|&pixel| pixel == 0));
        let pattern: Vec<u32> = (0..SMALL.pixels() as u32).collect();
        framebuffer.draw(&pattern);
        framebuffer.snapshot(&mut seen);
        assert_eq!(seen, pattern);
        framebuffer.clear();
        framebuffer.snapshot(&mut seen);
        assert!(seen.iter().all(|&pixel| pixel == 0));
    }

    #[test]
    fn pointer_positions_scale_to_the_absolute_range() {
        let size = XGA;
        assert_eq!(PointerEvent::at_pixel(0, 0, 0, size).x, 0);
        let corner = PointerEvent::at_pixel(1023, 767, 1, size);
        assert_eq!(
            (corner.x, corner.y, corner.buttons),
            (POINTER_MAX, POINTER_MAX, 1)
        );
        assert_eq!(PointerEvent::at_pixel(5000, 5000, 0, size).x, POINTER_MAX);
        let middle = PointerEvent::at_pixel(511, 383, 0, size);
        assert!((16300..16400).contains(&middle.x), "{middle:?}");
    }
}
