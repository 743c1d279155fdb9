//! One viewer's RFB session, without its socket: bytes from the viewer go
//! in, bytes for it and commands for the VM come out. It keeps the frame
//! the viewer has, so an update carries only what changed since (nothing
//! at all while the screen is idle), and a viewer that asks for updates
//! more slowly than the screen changes simply gets the latest state.
//! Pure; the control thread.

use crate::api::display::PointerEvent;
use crate::api::keys::Key;
use crate::api::{Command, KeyEvent};

use super::encode::{self, Frame, Rect, Zrle};
use super::rfb::{self, encoding, ClientMessage, PixelFormat, Version};

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    Security,
    ClientInit,
    Normal,
}

/// An update the viewer asked for and has not had yet.
#[derive(Debug, Clone, Copy)]
struct Request {
    incremental: bool,
    area: Rect,
}

pub struct Session {
    phase: Phase,
    version: Version,
    width: usize,
    height: usize,
    name: String,
    /// Bytes of an incomplete message.
    input: Vec<u8>,
    /// Cut text still to be skipped.
    cut_text_left: u32,
    format: PixelFormat,
    zrle: Option<Zrle>,
    copy_rect: bool,
    /// The frame the viewer has (empty before the first update).
    sent: Vec<u32>,
    request: Option<Request>,
    pointer: Option<PointerEvent>,
}

/// Why a session ends: the viewer broke the protocol.
pub type Refusal = String;

impl Session {
    /// A session for a screen of `width`×`height`; the server speaks first.
    pub fn new(width: usize, height: usize, name: &str, out: &mut Vec<u8>) -> Self {
        out.extend(rfb::SERVER_VERSION);
        Session {
            phase: Phase::Version,
            version: Version::V3_8,
            width,
            height,
            name: name.to_owned(),
            input: Vec::new(),
            cut_text_left: 0,
            format: PixelFormat::NATIVE,
            zrle: None,
            copy_rect: false,
            sent: Vec::new(),
            request: None,
            pointer: None,
        }
    }

    /// Whether the viewer waits for an update.
    pub fn wants_update(&self) -> bool {
        self.request.is_some()
    }

    /// Takes what the viewer sent: answers go to `out`, input for the VM
    /// to `commands`. `Err` says why the viewer must be closed.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        commands: &mut Vec<Command>,
    ) -> Result<(), Refusal> {
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(bytes);
        let mut taken = 0;
        let result = loop {
            let rest = &input[taken..];
            if self.cut_text_left > 0 {
                let skip = rest.len().min(self.cut_text_left as usize);
                if skip == 0 {
                    break Ok(());
                }
                self.cut_text_left -= skip as u32;
                taken += skip;
                continue;
            }
            match self.step(rest, out, commands) {
                Ok(0) => break Ok(()),
                Ok(used) => taken += used,
                Err(refusal) => break Err(refusal),
            }
        };
        input.drain(..taken);
        self.input = input;
        result
    }

    /// Handles one message from the start of `input`; how many bytes it
    /// took (0: it is incomplete).
    fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        commands: &mut Vec<Command>,
    ) -> Result<usize, Refusal> {
        match self.phase {
            Phase::Version => {
                let Some(message) = input.get(..12) else {
                    return Ok(0);
                };
                self.version = rfb::parse_version(message)?;
                if self.version == Version::V3_3 {
                    out.extend(u32::from(rfb::SECURITY_NONE).to_be_bytes());
                    self.phase = Phase::ClientInit;
                } else {
                    out.extend([1, rfb::SECURITY_NONE]);
                    self.phase = Phase::Security;
                }
                Ok(12)
            }
            Phase::Security => {
                let Some(&chosen) = input.first() else {
                    return Ok(0);
                };
                if chosen != rfb::SECURITY_NONE {
                    if self.version == Version::V3_8 {
                        out.extend(1u32.to_be_bytes());
                        rfb::server::reason(out, "vmpod offers only security type None (1)");
                    }
                    return Err(format!(
                        "chose security type {chosen}; vmpod offers only None (1)"
                    ));
                }
                if self.version == Version::V3_8 {
                    out.extend(0u32.to_be_bytes());
                }
                self.phase = Phase::ClientInit;
                Ok(1)
            }
            Phase::ClientInit => {
                if input.is_empty() {
                    return Ok(0);
                }
                // Every viewer shares the screen; the flag changes nothing.
                rfb::server::init(out, self.width as u16, self.height as u16, &self.name);
                self.phase = Phase::Normal;
                Ok(1)
            }
            Phase::Normal => {
                let Some((message, used)) = rfb::parse_client_message(input)? else {
                    return Ok(0);
                };
                self.handle(message, commands)?;
                Ok(used)
            }
        }
    }

    fn handle(
        &mut self,
        message: ClientMessage,
        commands: &mut Vec<Command>,
    ) -> Result<(), Refusal> {
        if !matches!(message, ClientMessage::Pointer { .. }) {
            log::debug!("VNC: {message:?}");
        }
        match message {
            ClientMessage::SetPixelFormat(format) => {
                format.check()?;
                self.format = format;
                // The viewer's copy is in the old format now; resend it all.
                self.sent.clear();
            }
            ClientMessage::SetEncodings(list) => {
                let zrle = list.contains(&encoding::ZRLE);
                if zrle != self.zrle.is_some() {
                    self.zrle = zrle.then(Zrle::default);
                }
                self.copy_rect = list.contains(&encoding::COPY_RECT);
            }
            ClientMessage::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                let (x, y) = (usize::from(x), usize::from(y));
                if x >= self.width || y >= self.height {
                    return Err(format!(
                        "asked for an update at ({x}, {y}), outside the {}x{} screen",
                        self.width, self.height
                    ));
                }
                let area = Rect {
                    x,
                    y,
                    width: usize::from(width).min(self.width - x),
                    height: usize::from(height).min(self.height - y),
                };
                // A full request joins any earlier one; an incremental one
                // never turns a pending full request into an incremental one.
                let incremental = incremental && self.request.is_none_or(|r| r.incremental);
                let area = match self.request {
                    Some(earlier) => union(earlier.area, area),
                    None => area,
                };
                self.request = Some(Request { incremental, area });
            }
            ClientMessage::Key { down, keysym } => match Key::by_keysym(keysym) {
                Some(key) => {
                    let event = KeyEvent { key, pressed: down };
                    if let Some(Command::Keys(keys)) = commands.last_mut() {
                        keys.push(event);
                    } else {
                        commands.push(Command::Keys(vec![event]));
                    }
                }
                None => log::debug!("VNC: keysym {keysym:#x} has no key on the VM's keyboard"),
            },
            ClientMessage::Pointer { buttons, x, y } => {
                let size = crate::api::display::DisplaySize {
                    width: self.width as u32,
                    height: self.height as u32,
                };
                let pointer = PointerEvent::at_pixel(x, y, buttons, size);
                if self.pointer != Some(pointer) {
                    self.pointer = Some(pointer);
                    commands.push(Command::Pointer(pointer));
                }
            }
            ClientMessage::CutText { length } => self.cut_text_left = length,
        }
        Ok(())
    }

    /// Answers the pending request from `frame` if anything in its area
    /// differs from what the viewer has; whether it sent an update.
    pub fn update(&mut self, frame: Frame, out: &mut Vec<u8>) -> bool {
        let Some(request) = self.request else {
            return false;
        };
        let whole = Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        };
        let mut scroll = None;
        let rects = if !request.incremental || self.sent.is_empty() {
            // The viewer has nothing yet, or asked for all of the area.
            if self.sent.is_empty() {
                self.sent = vec![0; self.width * self.height];
            }
            vec![request.area]
        } else {
            let old = Frame {
                pixels: &self.sent,
                width: self.width,
                height: self.height,
            };
            if self.copy_rect && request.area == whole {
                scroll = encode::find_scroll(old, frame);
            }
            if let Some(band) = scroll {
                encode::apply_scroll(&mut self.sent, self.width, band);
            }
            let old = Frame {
                pixels: &self.sent,
                width: self.width,
                height: self.height,
            };
            encode::damage(old, frame, request.area)
        };
        if rects.is_empty() && scroll.is_none() {
            return false;
        }
        rfb::server::update_header(out, (rects.len() + usize::from(scroll.is_some())) as u16);
        if let Some(band) = scroll {
            rfb::server::rectangle(
                out,
                0,
                band.y as u16,
                self.width as u16,
                band.height as u16,
                encoding::COPY_RECT,
            );
            out.extend(0u16.to_be_bytes());
            out.extend((band.source_y as u16).to_be_bytes());
        }
        for rect in &rects {
            let kind = if self.zrle.is_some() {
                encoding::ZRLE
            } else {
                encoding::RAW
            };
            rfb::server::rectangle(
                out,
                rect.x as u16,
                rect.y as u16,
                rect.width as u16,
                rect.height as u16,
                kind,
            );
            match &mut self.zrle {
                Some(zrle) => zrle.encode(frame, *rect, &self.format, out),
                None => encode::raw(frame, *rect, &self.format, out),
            }
            for y in rect.y..rect.y + rect.height {
                let start = y * self.width + rect.x;
                self.sent[start..start + rect.width]
                    .copy_from_slice(&frame.pixels[start..start + rect.width]);
            }
        }
        self.request = None;
        true
    }
}

/// The smallest rectangle holding both.
fn union(a: Rect, b: Rect) -> Rect {
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    Rect {
        x,
        y,
        width: (a.x + a.width).max(b.x + b.width) - x,
        height: (a.y + a.height).max(b.y + b.height) - y,
    }
}
