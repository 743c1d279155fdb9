//! QMP `screendump` and the monitor's `screendump`: the framebuffer as a
//! binary PPM (P6, what QEMU writes by default) or a PNG (8-bit RGB,
//! zlib through flate2). Pure encoders plus one file write; control thread.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::{Compression, Crc};

use crate::api::display::Framebuffer;

/// The file formats `screendump` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ppm,
    Png,
}

impl Format {
    /// QMP's `format` argument.
    pub fn from_qmp(name: &str) -> Result<Self, String> {
        match name {
            "ppm" => Ok(Format::Ppm),
            "png" => Ok(Format::Png),
            other => Err(format!(
                "Parameter 'format' does not accept value '{other}' (ppm or png)"
            )),
        }
    }
}

fn rgb(pixel: u32) -> [u8; 3] {
    [(pixel >> 16) as u8, (pixel >> 8) as u8, pixel as u8]
}

/// A binary PPM of `pixels` (XRGB, `width` per row).
pub fn ppm(pixels: &[u32], width: usize, height: usize) -> Vec<u8> {
    let mut out = format!("P6\n{width} {height}\n255\n").into_bytes();
    out.reserve(pixels.len() * 3);
    for &pixel in &pixels[..width * height] {
        out.extend(rgb(pixel));
    }
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(kind);
    out.extend(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A PNG of `pixels`: 8-bit RGB, no filter, one zlib stream.
pub fn png(pixels: &[u32], width: usize, height: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::with_capacity(13);
    header.extend((width as u32).to_be_bytes());
    header.extend((height as u32).to_be_bytes());
    header.extend([8, 2, 0, 0, 0]); // depth 8, RGB, deflate, no filter choice, no interlace
    chunk(&mut out, b"IHDR", &header);
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::fast());
    for row in pixels[..width * height].chunks(width) {
        let mut line = Vec::with_capacity(1 + width * 3);
        line.push(0); // filter type None
        for &pixel in row {
            line.extend(rgb(pixel));
        }
        // Writing into a Vec cannot fail.
        let _ = zlib.write_all(&line);
    }
    let data = zlib.finish().unwrap_or_default();
    chunk(&mut out, b"IDAT", &data);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes the screen to `path` in `format`.
pub fn write(display: &Framebuffer, path: &str, format: Format) -> Result<(), String> {
    let size = display.size();
    let mut pixels = Vec::new();
    display.snapshot(&mut pixels);
    let (width, height) = (size.width as usize, size.height as usize);
    let bytes = match format {
        Format::Ppm => ppm(&pixels, width, height),
        Format::Png => png(&pixels, width, height),
    };
    std::fs::write(path, bytes).map_err(|error| format!("Could not open '{path}': {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::ZlibDecoder;
    use std::io::Read;

    #[test]
    fn ppm_is_a_header_then_rgb_bytes() {
        let image = ppm(&[0x00ff_0000, 0x0000_ff00, 0x0000_00ff, 0x0012_3456], 2, 2);
        assert_eq!(
            image,
            b"P6\n2 2\n255\n\xff\x00\x00\x00\xff\x00\x00\x00\xff\x12\x34\x56"
        );
    }

    #[test]
    fn png_chunks_check_out_and_inflate_to_the_pixels() {
        let pixels: Vec<u32> = (0..12).map(|i| i * 0x0001_0203).collect();
        let image = png(&pixels, 4, 3);
        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut idat = Vec::new();
        let mut kinds = Vec::new();
        while at < image.len() {
            let length = u32::from_be_bytes(image[at..at + 4].try_into().unwrap()) as usize;
            let kind = &image[at + 4..at + 8];
            let data = &image[at + 8..at + 8 + length];
            let stored =
                u32::from_be_bytes(image[at + 8 + length..at + 12 + length].try_into().unwrap());
            let mut crc = Crc::new();
            crc.update(kind);
            crc.update(data);
            assert_eq!(crc.sum(), stored, "CRC of {kind:?}");
            if kind == b"IHDR" {
                assert_eq!(data, [0, 0, 0, 4, 0, 0, 0, 3, 8, 2, 0, 0, 0]);
            }
            if kind == b"IDAT" {
                idat.extend(data);
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            at += 12 + length;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        let mut raw = Vec::new();
        ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("zlib");
        assert_eq!(raw.len(), 3 * (1 + 4 * 3));
        assert_eq!(&raw[..7], [0, 0, 0, 0, 1, 2, 3], "filter byte, then RGB");
    }
}
