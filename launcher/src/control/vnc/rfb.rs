//! The Remote Framebuffer protocol (RFC 6143) as bytes: the handshake,
//! client messages read from a buffer that may hold a partial message,
//! and server messages written into a buffer. No sockets here. Pure; any
//! thread.

/// Protocol versions vmpod speaks (the server offers 3.8; older viewers
/// answer with theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3_3,
    V3_7,
    V3_8,
}

pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";
/// Security type "None".
pub const SECURITY_NONE: u8 = 1;

/// Reads a viewer's ProtocolVersion message (12 bytes).
pub fn parse_version(message: &[u8]) -> Result<Version, String> {
    let text = std::str::from_utf8(message).unwrap_or("");
    let numbers = text
        .strip_prefix("RFB ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    match numbers {
        Some((3, 3)) => Ok(Version::V3_3),
        Some((3, 7)) => Ok(Version::V3_7),
        // 3.8 and anything newer speaks 3.8 (RFC 6143, 7.1.1); 3.4 and 3.6
        // are what some old viewers send for 3.3.
        Some((3, minor)) if minor >= 8 => Ok(Version::V3_8),
        Some((3, 4..=6)) => Ok(Version::V3_3),
        _ => Err(format!("not an RFB protocol version: {message:?}")),
    }
}

/// Encodings (RFC 6143, 7.7 and 7.8).
pub mod encoding {
    pub const RAW: i32 = 0;
    pub const COPY_RECT: i32 = 1;
    pub const ZRLE: i32 = 16;
    pub const DESKTOP_SIZE: i32 = -223;
}

/// How a viewer wants pixels (RFC 6143, 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// What the framebuffer holds: 32-bit XRGB, little-endian, depth 24.
    pub const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend([
            self.bits_per_pixel,
            self.depth,
            u8::from(self.big_endian),
            u8::from(self.true_colour),
        ]);
        for max in [self.red_max, self.green_max, self.blue_max] {
            out.extend(max.to_be_bytes());
        }
        out.extend([self.red_shift, self.green_shift, self.blue_shift, 0, 0, 0]);
    }

    pub fn read(bytes: &[u8; 16]) -> PixelFormat {
        let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        PixelFormat {
            bits_per_pixel: bytes[0],
            depth: bytes[1],
            big_endian: bytes[2] != 0,
            true_colour: bytes[3] != 0,
            red_max: u16_at(4),
            green_max: u16_at(6),
            blue_max: u16_at(8),
            red_shift: bytes[10],
            green_shift: bytes[11],
            blue_shift: bytes[12],
        }
    }

    /// Whether vmpod can send pixels this way: true colour in 8, 16 or 32
    /// bits, each channel inside the pixel.
    pub fn check(&self) -> Result<(), String> {
        if !self.true_colour {
            return Err("asked for a colour-map pixel format, which vmpod does not offer".into());
        }
        if ![8, 16, 32].contains(&self.bits_per_pixel) {
            return Err(format!(
                "asked for {} bits per pixel (vmpod sends 8, 16 or 32)",
                self.bits_per_pixel
            ));
        }
        for (max, shift) in [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ] {
            let bits = 16 - max.leading_zeros();
            if max == 0 || u32::from(shift) + bits > u32::from(self.bits_per_pixel) {
                return Err(format!(
                    "asked for a colour channel (max {max}, shift {shift}) outside a {}-bit pixel",
                    self.bits_per_pixel
                ));
            }
        }
        Ok(())
    }

    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// An XRGB pixel as this format's pixel value. Bits no channel uses
    /// are ones: RFB leaves them undefined, and viewers that take the
    /// spare byte of a 32-bit pixel as alpha (noVNC 1.3's Raw decoder
    /// does, for all but its first rows) then draw opaque pixels.
    pub fn convert(&self, xrgb: u32) -> u32 {
        let channel = |value: u32, max: u16, shift: u8| -> u32 {
            ((value * u32::from(max) + 127) / 255) << shift
        };
        let colour = channel((xrgb >> 16) & 0xff, self.red_max, self.red_shift)
            | channel((xrgb >> 8) & 0xff, self.green_max, self.green_shift)
            | channel(xrgb & 0xff, self.blue_max, self.blue_shift);
        colour | self.spare_bits()
    }

    /// The bits of a pixel no colour channel uses.
    fn spare_bits(&self) -> u32 {
        let used = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        let width = u32::MAX >> (32 - u32::from(self.bits_per_pixel.clamp(8, 32)));
        !used & width
    }

    /// One pixel value in this format's byte order; the first
    /// [`bytes_per_pixel`](Self::bytes_per_pixel) bytes are the pixel.
    pub fn bytes(&self, value: u32) -> [u8; 4] {
        match (self.bits_per_pixel, self.big_endian) {
            (32, false) => value.to_le_bytes(),
            (32, true) => value.to_be_bytes(),
            (16, false) => {
                let [a, b] = (value as u16).to_le_bytes();
                [a, b, 0, 0]
            }
            (16, true) => {
                let [a, b] = (value as u16).to_be_bytes();
                [a, b, 0, 0]
            }
            _ => [value as u8, 0, 0, 0],
        }
    }

    /// Appends one pixel value in this format's size and byte order.
    pub fn put(&self, value: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes(value)[..self.bytes_per_pixel()]);
    }

    /// ZRLE's compressed pixel (RFC 6143, 7.7.6): three bytes when a
    /// 32-bit true-colour pixel's colour fits in its low or high three;
    /// returns which bytes of [`put`](Self::put)'s output to keep.
    pub fn cpixel_bytes(&self) -> std::ops::Range<usize> {
        if self.bits_per_pixel != 32 || self.depth > 24 {
            return 0..self.bytes_per_pixel();
        }
        let mask = self.convert(0x00ff_ffff) & !self.spare_bits();
        let low_three = mask & 0xff00_0000 == 0;
        let high_three = mask & 0xff == 0;
        match (low_three, high_three, self.big_endian) {
            (true, _, false) | (false, true, true) => 0..3,
            (true, _, true) | (false, true, false) => 1..4,
            _ => 0..4,
        }
    }
}

/// What a viewer sent (RFC 6143, 7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    Key {
        down: bool,
        keysym: u32,
    },
    Pointer {
        buttons: u8,
        x: u16,
        y: u16,
    },
    /// The viewer's clipboard; vmpod has nowhere to put it.
    CutText {
        length: u32,
    },
}

/// The most encodings a SetEncodings may list (real viewers send ~30).
pub const MAX_ENCODINGS: usize = 1024;
/// The most cut text a viewer may send; more closes it.
pub const MAX_CUT_TEXT: u32 = 1 << 20;

/// Reads one client message from the start of `input`: `Ok(None)` while
/// it is incomplete, else the message and how many bytes it took.
pub fn parse_client_message(input: &[u8]) -> Result<Option<(ClientMessage, usize)>, String> {
    let Some(&kind) = input.first() else {
        return Ok(None);
    };
    let need = |len: usize| input.len() >= len;
    let u16_at = |at: usize| u16::from_be_bytes([input[at], input[at + 1]]);
    let u32_at =
        |at: usize| u32::from_be_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]]);
    let message = match kind {
        0 if need(20) => {
            let format: &[u8; 16] = input[4..20].try_into().expect("16 bytes");
            (ClientMessage::SetPixelFormat(PixelFormat::read(format)), 20)
        }
        2 if need(4) => {
            let count = usize::from(u16_at(2));
            if count > MAX_ENCODINGS {
                return Err(format!(
                    "sent SetEncodings with {count} encodings (at most {MAX_ENCODINGS})"
                ));
            }
            if !need(4 + 4 * count) {
                return Ok(None);
            }
            let encodings = (0..count)
                .map(|index| u32_at(4 + 4 * index) as i32)
                .collect();
            (ClientMessage::SetEncodings(encodings), 4 + 4 * count)
        }
        3 if need(10) => (
            ClientMessage::UpdateRequest {
                incremental: input[1] != 0,
                x: u16_at(2),
                y: u16_at(4),
                width: u16_at(6),
                height: u16_at(8),
            },
            10,
        ),
        4 if need(8) => (
            ClientMessage::Key {
                down: input[1] != 0,
                keysym: u32_at(4),
            },
            8,
        ),
        5 if need(6) => (
            ClientMessage::Pointer {
                buttons: input[1],
                x: u16_at(2),
                y: u16_at(4),
            },
            6,
        ),
        6 if need(8) => {
            let length = u32_at(4);
            if length > MAX_CUT_TEXT {
                return Err(format!(
                    "sent {length} bytes of cut text (at most {MAX_CUT_TEXT})"
                ));
            }
            // The text itself is skipped by the caller as it arrives.
            (ClientMessage::CutText { length }, 8)
        }
        0 | 2..=6 => return Ok(None),
        other => {
            return Err(format!(
                "sent message type {other}, which vmpod does not know"
            ))
        }
    };
    Ok(Some(message))
}

/// Server messages, appended to `out`.
pub mod server {
    /// ServerInit: the screen's size, the pixel format and the VM's name.
    pub fn init(out: &mut Vec<u8>, width: u16, height: u16, name: &str) {
        out.extend(width.to_be_bytes());
        out.extend(height.to_be_bytes());
        super::PixelFormat::NATIVE.write(out);
        out.extend((name.len() as u32).to_be_bytes());
        out.extend(name.as_bytes());
    }

    /// A FramebufferUpdate header for `rectangles` rectangles.
    pub fn update_header(out: &mut Vec<u8>, rectangles: u16) {
        out.extend([0, 0]);
        out.extend(rectangles.to_be_bytes());
    }

    /// A rectangle's header.
    pub fn rectangle(out: &mut Vec<u8>, x: u16, y: u16, width: u16, height: u16, encoding: i32) {
        for value in [x, y, width, height] {
            out.extend(value.to_be_bytes());
        }
        out.extend(encoding.to_be_bytes());
    }

    /// The security handshake's failure reason (3.8: after the result).
    pub fn reason(out: &mut Vec<u8>, text: &str) {
        out.extend((text.len() as u32).to_be_bytes());
        out.extend(text.as_bytes());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A client message as a viewer encodes it.
    pub fn encode(message: &ClientMessage) -> Vec<u8> {
        let mut out = Vec::new();
        match message {
            ClientMessage::SetPixelFormat(format) => {
                out.extend([0, 0, 0, 0]);
                format.write(&mut out);
            }
            ClientMessage::SetEncodings(list) => {
                out.extend([2, 0]);
                out.extend((list.len() as u16).to_be_bytes());
                for encoding in list {
                    out.extend(encoding.to_be_bytes());
                }
            }
            ClientMessage::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                out.extend([3, u8::from(*incremental)]);
                for value in [x, y, width, height] {
                    out.extend(value.to_be_bytes());
                }
            }
            ClientMessage::Key { down, keysym } => {
                out.extend([4, u8::from(*down), 0, 0]);
                out.extend(keysym.to_be_bytes());
            }
            ClientMessage::Pointer { buttons, x, y } => {
                out.extend([5, *buttons]);
                out.extend(x.to_be_bytes());
                out.extend(y.to_be_bytes());
            }
            ClientMessage::CutText { length } => {
                out.extend([6, 0, 0, 0]);
                out.extend(length.to_be_bytes());
            }
        }
        out
    }

    /// 16-bit 5-6-5, big-endian: what small viewers ask for.
    pub const RGB565: PixelFormat = PixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: true,
        true_colour: true,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
        blue_shift: 0,
    };

    #[test]
    fn every_client_message_round_trips_and_waits_for_its_last_byte() {
        let bgr565 = PixelFormat {
            red_shift: 0,
            blue_shift: 11,
            ..RGB565
        };
        let messages = [
            ClientMessage::SetPixelFormat(bgr565),
            ClientMessage::SetEncodings(vec![16, 1, 0, -223, -239]),
            ClientMessage::SetEncodings(vec![]),
            ClientMessage::UpdateRequest {
                incremental: true,
                x: 1,
                y: 2,
                width: 300,
                height: 400,
            },
            ClientMessage::Key {
                down: true,
                keysym: 0xff0d,
            },
            ClientMessage::Pointer {
                buttons: 5,
                x: 1023,
                y: 767,
            },
            ClientMessage::CutText { length: 12 },
        ];
        for message in &messages {
            let bytes = encode(message);
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_client_message(&bytes[..cut]),
                    Ok(None),
                    "{message:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.extend([3, 0]);
            assert_eq!(
                parse_client_message(&longer),
                Ok(Some((message.clone(), bytes.len())))
            );
        }
    }

    #[test]
    fn hostile_messages_are_refused_with_a_reason() {
        let unknown = parse_client_message(&[99, 0, 0]).expect_err("unknown type");
        assert!(unknown.contains("message type 99"), "{unknown}");
        let mut huge_cut = vec![6, 0, 0, 0];
        huge_cut.extend((MAX_CUT_TEXT + 1).to_be_bytes());
        assert!(parse_client_message(&huge_cut)
            .expect_err("too long")
            .contains("cut text"));
        let mut many = vec![2, 0];
        many.extend(u16::MAX.to_be_bytes());
        assert!(parse_client_message(&many)
            .expect_err("many")
            .contains("encodings"));
    }

    #[test]
    fn versions_are_read_as_the_rfc_says() {
        assert_eq!(parse_version(b"RFB 003.008\n"), Ok(Version::V3_8));
        assert_eq!(parse_version(b"RFB 003.007\n"), Ok(Version::V3_7));
        assert_eq!(parse_version(b"RFB 003.003\n"), Ok(Version::V3_3));
        assert_eq!(parse_version(b"RFB 003.889\n"), Ok(Version::V3_8));
        assert!(parse_version(b"GET / HTTP/1.").is_err());
    }

    #[test]
    fn pixel_formats_convert_and_pack() {
        let native = PixelFormat::NATIVE;
        assert_eq!(
            native.convert(0x12_34_56),
            0xff12_3456,
            "spare bits are ones"
        );
        let mut out = Vec::new();
        native.put(native.convert(0x12_34_56), &mut out);
        assert_eq!(out, [0x56, 0x34, 0x12, 0xff]);
        assert_eq!(native.cpixel_bytes(), 0..3);
        let rgb565 = PixelFormat {
            big_endian: false,
            ..RGB565
        };
        assert_eq!(rgb565.convert(0xff_ff_ff), 0xffff);
        assert_eq!(rgb565.convert(0xff_00_00), 0xf800);
        assert_eq!(rgb565.cpixel_bytes(), 0..2);
        let shifted_up = PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..native
        };
        assert_eq!(shifted_up.cpixel_bytes(), 1..4);
        let mut bad = native;
        bad.true_colour = false;
        assert!(bad.check().is_err());
        bad = PixelFormat {
            bits_per_pixel: 24,
            ..native
        };
        assert!(bad.check().is_err());
        bad = PixelFormat {
            red_shift: 30,
            ..native
        };
        assert!(bad.check().is_err());
        assert!(native.check().is_ok() && rgb565.check().is_ok());
        let mut written = Vec::new();
        native.write(&mut written);
        assert_eq!(PixelFormat::read(written[..16].try_into().unwrap()), native);
    }
}
