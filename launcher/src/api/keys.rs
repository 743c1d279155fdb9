//! The one key table every input path shares: QEMU's key names ("qcodes",
//! as QMP `send-key` and HMP `sendkey` spell them), PC scancodes in set 1
//! (what an i8042 with translation on delivers), Linux evdev key codes
//! (virtio-input) and X keysyms (VNC key events).
//!
//! Plain data and lookups; any thread.

/// One key of a PC keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub qcode: &'static str,
    /// Set-1 make code, without the 0xE0 prefix.
    pub scancode: u8,
    /// Whether the scancode carries the 0xE0 prefix.
    pub extended: bool,
    /// Linux `KEY_*` code (include/uapi/linux/input-event-codes.h).
    pub evdev: u16,
    /// The X keysym of the key unshifted (X11/keysymdef.h).
    pub keysym: u32,
}

/// A key going down or coming up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    pub key: Key,
    pub pressed: bool,
}

const fn key(qcode: &'static str, scancode: u8, extended: bool, evdev: u16, keysym: u32) -> Key {
    Key {
        qcode,
        scancode,
        extended,
        evdev,
        keysym,
    }
}

/// (qcode, set-1 scancode, E0 prefix, evdev code, keysym)
pub const KEYS: &[Key] = &[
    key("esc", 0x01, false, 1, 0xff1b),
    key("1", 0x02, false, 2, 0x31),
    key("2", 0x03, false, 3, 0x32),
    key("3", 0x04, false, 4, 0x33),
    key("4", 0x05, false, 5, 0x34),
    key("5", 0x06, false, 6, 0x35),
    key("6", 0x07, false, 7, 0x36),
    key("7", 0x08, false, 8, 0x37),
    key("8", 0x09, false, 9, 0x38),
    key("9", 0x0a, false, 10, 0x39),
    key("0", 0x0b, false, 11, 0x30),
    key("minus", 0x0c, false, 12, 0x2d),
    key("equal", 0x0d, false, 13, 0x3d),
    key("backspace", 0x0e, false, 14, 0xff08),
    key("tab", 0x0f, false, 15, 0xff09),
    key("q", 0x10, false, 16, 0x71),
    key("w", 0x11, false, 17, 0x77),
    key("e", 0x12, false, 18, 0x65),
    key("r", 0x13, false, 19, 0x72),
    key("t", 0x14, false, 20, 0x74),
    key("y", 0x15, false, 21, 0x79),
    key("u", 0x16, false, 22, 0x75),
    key("i", 0x17, false, 23, 0x69),
    key("o", 0x18, false, 24, 0x6f),
    key("p", 0x19, false, 25, 0x70),
    key("bracket_left", 0x1a, false, 26, 0x5b),
    key("bracket_right", 0x1b, false, 27, 0x5d),
    key("ret", 0x1c, false, 28, 0xff0d),
    key("ctrl", 0x1d, false, 29, 0xffe3),
    key("a", 0x1e, false, 30, 0x61),
    key("s", 0x1f, false, 31, 0x73),
    key("d", 0x20, false, 32, 0x64),
    key("f", 0x21, false, 33, 0x66),
    key("g", 0x22, false, 34, 0x67),
    key("h", 0x23, false, 35, 0x68),
    key("j", 0x24, false, 36, 0x6a),
    key("k", 0x25, false, 37, 0x6b),
    key("l", 0x26, false, 38, 0x6c),
    key("semicolon", 0x27, false, 39, 0x3b),
    key("apostrophe", 0x28, false, 40, 0x27),
    key("grave_accent", 0x29, false, 41, 0x60),
    key("shift", 0x2a, false, 42, 0xffe1),
    key("backslash", 0x2b, false, 43, 0x5c),
    key("z", 0x2c, false, 44, 0x7a),
    key("x", 0x2d, false, 45, 0x78),
    key("c", 0x2e, false, 46, 0x63),
    key("v", 0x2f, false, 47, 0x76),
    key("b", 0x30, false, 48, 0x62),
    key("n", 0x31, false, 49, 0x6e),
    key("m", 0x32, false, 50, 0x6d),
    key("comma", 0x33, false, 51, 0x2c),
    key("dot", 0x34, false, 52, 0x2e),
    key("slash", 0x35, false, 53, 0x2f),
    key("shift_r", 0x36, false, 54, 0xffe2),
    key("kp_multiply", 0x37, false, 55, 0xffaa),
    key("alt", 0x38, false, 56, 0xffe9),
    key("spc", 0x39, false, 57, 0x20),
    key("caps_lock", 0x3a, false, 58, 0xffe5),
    key("f1", 0x3b, false, 59, 0xffbe),
    key("f2", 0x3c, false, 60, 0xffbf),
    key("f3", 0x3d, false, 61, 0xffc0),
    key("f4", 0x3e, false, 62, 0xffc1),
    key("f5", 0x3f, false, 63, 0xffc2),
    key("f6", 0x40, false, 64, 0xffc3),
    key("f7", 0x41, false, 65, 0xffc4),
    key("f8", 0x42, false, 66, 0xffc5),
    key("f9", 0x43, false, 67, 0xffc6),
    key("f10", 0x44, false, 68, 0xffc7),
    key("num_lock", 0x45, false, 69, 0xff7f),
    key("scroll_lock", 0x46, false, 70, 0xff14),
    key("f11", 0x57, false, 87, 0xffc8),
    key("f12", 0x58, false, 88, 0xffc9),
    key("ctrl_r", 0x1d, true, 97, 0xffe4),
    key("alt_r", 0x38, true, 100, 0xffea),
    key("home", 0x47, true, 102, 0xff50),
    key("up", 0x48, true, 103, 0xff52),
    key("pgup", 0x49, true, 104, 0xff55),
    key("left", 0x4b, true, 105, 0xff51),
    key("right", 0x4d, true, 106, 0xff53),
    key("end", 0x4f, true, 107, 0xff57),
    key("down", 0x50, true, 108, 0xff54),
    key("pgdn", 0x51, true, 109, 0xff56),
    key("insert", 0x52, true, 110, 0xff63),
    key("delete", 0x53, true, 111, 0xffff),
    key("meta_l", 0x5b, true, 125, 0xffeb),
    key("meta_r", 0x5c, true, 126, 0xffec),
    key("menu", 0x5d, true, 127, 0xff67),
];

const EXTENDED_PREFIX: u8 = 0xe0;
const RELEASE_BIT: u8 = 0x80;

impl Key {
    pub fn by_qcode(qcode: &str) -> Option<Key> {
        KEYS.iter().find(|key| key.qcode == qcode).copied()
    }

    pub fn by_evdev(code: u16) -> Option<Key> {
        KEYS.iter().find(|key| key.evdev == code).copied()
    }

    /// The key that produces `keysym` on a US keyboard; an upper-case
    /// letter or a shifted symbol (`>`, `|`, `:` …) is its key, since the
    /// viewer sends Shift itself.
    pub fn by_keysym(keysym: u32) -> Option<Key> {
        let unshifted = match keysym {
            0x41..=0x5a => keysym + 0x20,
            other => char::from_u32(other)
                .and_then(|symbol| SHIFTED.chars().position(|shifted| shifted == symbol))
                .and_then(|at| UNSHIFTED.chars().nth(at))
                .map_or(other, u32::from),
        };
        KEYS.iter().find(|key| key.keysym == unshifted).copied()
    }

    /// The key QEMU's key numbers ("qnum": the set-1 make code, plus
    /// 0x80 for keys with the 0xE0 prefix) name.
    pub fn by_qnum(number: u64) -> Option<Key> {
        let extended = number & 0x80 != 0;
        let scancode = u8::try_from(number & !0x80).ok()?;
        KEYS.iter()
            .find(|key| key.scancode == scancode && key.extended == extended)
            .copied()
    }

    /// Set-1 bytes for this key going down or up.
    pub fn set1_bytes(self, pressed: bool) -> Vec<u8> {
        let code = if pressed {
            self.scancode
        } else {
            self.scancode | RELEASE_BIT
        };
        if self.extended {
            vec![EXTENDED_PREFIX, code]
        } else {
            vec![code]
        }
    }
}

/// Symbols a US keyboard types with Shift, and the keys' own symbols.
const SHIFTED: &str = "!@#$%^&*()_+{}|:\"<>?~";
const UNSHIFTED: &str = "1234567890-=[]\\;',./`";

/// The events for pressing `qcodes` together and letting go again in
/// reverse order, as QEMU's send-key does; `Err` names an unknown key.
pub fn chord(qcodes: &[&str]) -> Result<Vec<KeyEvent>, String> {
    let keys = qcodes
        .iter()
        .map(|qcode| {
            Key::by_qcode(qcode).ok_or_else(|| format!("'{qcode}' is not a key vmpod knows"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let presses = keys.iter().map(|&key| KeyEvent { key, pressed: true });
    let releases = keys.iter().rev().map(|&key| KeyEvent {
        key,
        pressed: false,
    });
    Ok(presses.chain(releases).collect())
}

/// Set-1 bytes for a sequence of key events.
pub fn set1_bytes(events: &[KeyEvent]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|event| event.key.set1_bytes(event.pressed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chord_presses_in_order_and_releases_in_reverse() {
        let a = chord(&["a"]).expect("known");
        assert_eq!(set1_bytes(&a), [0x1e, 0x9e]);
        let three = chord(&["ctrl", "alt", "delete"]).expect("known");
        assert_eq!(
            set1_bytes(&three),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        );
        assert_eq!(
            chord(&["hyper"]),
            Err("'hyper' is not a key vmpod knows".to_owned())
        );
    }

    #[test]
    fn every_name_and_code_is_unique() {
        for (index, key) in KEYS.iter().enumerate() {
            for other in &KEYS[index + 1..] {
                assert_ne!(key.qcode, other.qcode);
                assert_ne!(key.evdev, other.evdev, "{}", key.qcode);
                assert_ne!(key.keysym, other.keysym, "{}", key.qcode);
                assert!(
                    (key.scancode, key.extended) != (other.scancode, other.extended),
                    "{}",
                    key.qcode
                );
            }
        }
    }

    #[test]
    fn the_main_block_shares_evdev_and_set1_codes() {
        // Linux numbered KEY_ESC..KEY_F10 after the set-1 make codes.
        for key in KEYS
            .iter()
            .filter(|key| !key.extended && key.scancode <= 0x44)
        {
            assert_eq!(u16::from(key.scancode), key.evdev, "{}", key.qcode);
        }
    }

    #[test]
    fn lookups_agree_across_the_four_namings() {
        let enter = Key::by_qcode("ret").expect("ret");
        assert_eq!(Key::by_evdev(28), Some(enter));
        assert_eq!(Key::by_keysym(0xff0d), Some(enter));
        assert_eq!(Key::by_keysym(u32::from(b'Q')), Key::by_qcode("q"));
        assert_eq!(Key::by_keysym(0x1234_5678), None);
        assert_eq!(Key::by_keysym(u32::from(b'>')), Key::by_qcode("dot"));
        assert_eq!(Key::by_keysym(u32::from(b'|')), Key::by_qcode("backslash"));
        assert_eq!(Key::by_keysym(u32::from(b':')), Key::by_qcode("semicolon"));
        assert_eq!(Key::by_keysym(u32::from(b'"')), Key::by_qcode("apostrophe"));
        assert_eq!(SHIFTED.chars().count(), UNSHIFTED.chars().count());
    }
}
