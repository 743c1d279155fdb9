//! A VNC viewer written here from RFC 6143, for the tests: it decodes
//! Raw, CopyRect and ZRLE back into pixels. And screens to show it: random
//! ones, and ones like a text console.

use flate2::{Decompress, FlushDecompress};

use super::encode::{self, Frame, Rect};
use super::rfb::{encoding, PixelFormat};

/// A tiny deterministic random source.
pub(super) struct Noise(u64);

impl Noise {
    pub(super) fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// A text console's look: a background, lines of "glyphs" in a few
/// colours, a status bar.
pub(super) fn console_screen(width: usize, height: usize, seed: u64) -> Vec<u32> {
    let mut noise = Noise(seed | 1);
    let mut pixels = vec![0x0000_00aa; width * height];
    for line in 0..height / 16 {
        let colour = [0x00aa_aaaa, 0x00ff_ff55, 0x0055_ff55][line % 3];
        let length = (noise.next() as usize) % (width / 8);
        for cell in 0..length {
            let glyph = noise.next();
            for row in 0..14 {
                for column in 0..8 {
                    if glyph >> ((row * 8 + column) % 31) & 1 == 1 {
                        pixels[(line * 16 + row) * width + cell * 8 + column] = colour;
                    }
                }
            }
        }
    }
    for pixel in &mut pixels[(height - 16) * width..] {
        *pixel = 0x00cc_cccc;
    }
    pixels
}

pub(super) fn random_screen(width: usize, height: usize, seed: u64) -> Vec<u32> {
    let mut noise = Noise(seed | 1);
    (0..width * height)
        .map(|_| noise.next() & 0x00ff_ffff)
        .collect()
}

/// What a viewer holds, decoded from server messages.
pub(super) struct Viewer {
    pub(super) format: PixelFormat,
    pub(super) width: usize,
    /// Pixels as the viewer's values (its format).
    pub(super) pixels: Vec<u32>,
    pub(super) zlib: Decompress,
    pub(super) rectangles: Vec<(Rect, i32)>,
}

impl Viewer {
    pub(super) fn new(format: PixelFormat, width: usize, height: usize) -> Self {
        Viewer {
            format,
            width,
            pixels: vec![0; width * height],
            zlib: Decompress::new(true),
            rectangles: Vec::new(),
        }
    }

    pub(super) fn pixel(&self, bytes: &[u8]) -> u32 {
        let mut full = [0u8; 4];
        full[..bytes.len()].copy_from_slice(bytes);
        match (self.format.bits_per_pixel, self.format.big_endian) {
            (32, false) => u32::from_le_bytes(full),
            (32, true) => u32::from_be_bytes(full),
            (16, false) => u32::from(u16::from_le_bytes([full[0], full[1]])),
            (16, true) => u32::from(u16::from_be_bytes([full[0], full[1]])),
            _ => u32::from(full[0]),
        }
    }

    pub(super) fn cpixel(&self, bytes: &[u8]) -> u32 {
        let range = self.format.cpixel_bytes();
        let mut full = [0u8; 4];
        full[range.clone()].copy_from_slice(bytes);
        self.pixel(&full[..self.format.bytes_per_pixel()])
    }

    /// Applies one FramebufferUpdate; returns the bytes it took.
    pub(super) fn apply(&mut self, message: &[u8]) -> usize {
        assert_eq!(message[0], 0, "a FramebufferUpdate");
        let count = u16::from_be_bytes([message[2], message[3]]);
        let mut at = 4;
        let u16_at = |at: usize| usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
        for _ in 0..count {
            let rect = Rect {
                x: u16_at(at),
                y: u16_at(at + 2),
                width: u16_at(at + 4),
                height: u16_at(at + 6),
            };
            let kind = i32::from_be_bytes(message[at + 8..at + 12].try_into().unwrap());
            at += 12;
            self.rectangles.push((rect, kind));
            match kind {
                encoding::RAW => {
                    let size = self.format.bytes_per_pixel();
                    for y in rect.y..rect.y + rect.height {
                        for x in rect.x..rect.x + rect.width {
                            self.pixels[y * self.width + x] = self.pixel(&message[at..at + size]);
                            at += size;
                        }
                    }
                }
                encoding::COPY_RECT => {
                    let (source_x, source_y) = (u16_at(at), u16_at(at + 2));
                    at += 4;
                    let copy = self.pixels.clone();
                    for y in 0..rect.height {
                        for x in 0..rect.width {
                            self.pixels[(rect.y + y) * self.width + rect.x + x] =
                                copy[(source_y + y) * self.width + source_x + x];
                        }
                    }
                }
                encoding::ZRLE => {
                    let length =
                        u32::from_be_bytes(message[at..at + 4].try_into().unwrap()) as usize;
                    at += 4;
                    let mut data = Vec::with_capacity(1 << 22);
                    self.zlib
                        .decompress_vec(&message[at..at + length], &mut data, FlushDecompress::Sync)
                        .expect("zlib data");
                    at += length;
                    self.zrle(rect, &data);
                }
                other => panic!("unexpected encoding {other}"),
            }
        }
        at
    }

    pub(super) fn zrle(&mut self, rect: Rect, data: &[u8]) {
        let size = self.format.cpixel_bytes().len();
        let mut at = 0;
        let mut take = |count: usize| {
            let slice = &data[at..at + count];
            at += count;
            slice
        };
        let run_length = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
            let mut length = 1;
            loop {
                let byte = take(1)[0];
                length += usize::from(byte);
                if byte != 255 {
                    return length;
                }
            }
        };
        let mut take_owned = |count: usize| take(count).to_vec();
        for tile_y in (rect.y..rect.y + rect.height).step_by(encode::TILE) {
            for tile_x in (rect.x..rect.x + rect.width).step_by(encode::TILE) {
                let width = encode::TILE.min(rect.x + rect.width - tile_x);
                let height = encode::TILE.min(rect.y + rect.height - tile_y);
                let kind = take_owned(1)[0];
                let mut values = Vec::with_capacity(width * height);
                match kind {
                    0 => {
                        for _ in 0..width * height {
                            values.push(self.cpixel(&take_owned(size)));
                        }
                    }
                    1 => values = vec![self.cpixel(&take_owned(size)); width * height],
                    2..=16 => {
                        let palette: Vec<u32> =
                            (0..kind).map(|_| self.cpixel(&take_owned(size))).collect();
                        let bits = match kind {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        for _ in 0..height {
                            let row = take_owned((width * bits).div_ceil(8));
                            for x in 0..width {
                                let bit = x * bits;
                                let index =
                                    row[bit / 8] >> (8 - bits - bit % 8) & ((1 << bits) - 1);
                                values.push(palette[usize::from(index)]);
                            }
                        }
                    }
                    128 => {
                        while values.len() < width * height {
                            let value = self.cpixel(&take_owned(size));
                            let length = run_length(&mut take_owned);
                            values.extend(std::iter::repeat_n(value, length));
                        }
                    }
                    130..=255 => {
                        let palette: Vec<u32> = (0..kind - 128)
                            .map(|_| self.cpixel(&take_owned(size)))
                            .collect();
                        while values.len() < width * height {
                            let index = take_owned(1)[0];
                            let length = if index & 128 != 0 {
                                run_length(&mut take_owned)
                            } else {
                                1
                            };
                            values.extend(std::iter::repeat_n(
                                palette[usize::from(index & 127)],
                                length,
                            ));
                        }
                    }
                    other => panic!("subencoding {other} is not ZRLE's"),
                }
                assert_eq!(values.len(), width * height, "tile at {tile_x},{tile_y}");
                for (index, value) in values.into_iter().enumerate() {
                    self.pixels[(tile_y + index / width) * self.width + tile_x + index % width] =
                        value;
                }
            }
        }
        assert_eq!(at, data.len(), "every byte of the ZRLE data used");
    }

    /// The screen it shows: every pixel's colour channels are the
    /// screen's (spare bits are not colour; ZRLE does not even send them).
    pub(super) fn expect_shows(&self, screen: &[u32]) {
        let f = &self.format;
        let colour = (u32::from(f.red_max) << f.red_shift)
            | (u32::from(f.green_max) << f.green_shift)
            | (u32::from(f.blue_max) << f.blue_shift);
        for (index, (&shown, &actual)) in self.pixels.iter().zip(screen).enumerate() {
            assert_eq!(
                shown & colour,
                self.format.convert(actual) & colour,
                "pixel ({}, {})",
                index % self.width,
                index / self.width
            );
        }
    }
}

pub(super) fn whole_screen(width: usize, height: usize) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width,
        height,
    }
}

pub(super) fn frame_of(pixels: &[u32], width: usize, height: usize) -> Frame<'_> {
    Frame {
        pixels,
        width,
        height,
    }
}
