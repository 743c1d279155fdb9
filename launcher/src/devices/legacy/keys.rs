//! Key names as QEMU's QMP `send-key` and HMP `sendkey` spell them
//! ("qcodes": `a`, `ctrl`, `alt`, `delete`, `f1`, …) and their scancodes in
//! set 1 (what an i8042 with translation on delivers). Extended keys carry
//! the 0xE0 prefix; a release is the make code with bit 7 set.

/// (qcode, scancode without the E0 prefix, extended?)
const KEYS: &[(&str, u8, bool)] = &[
    ("esc", 0x01, false),
    ("1", 0x02, false),
    ("2", 0x03, false),
    ("3", 0x04, false),
    ("4", 0x05, false),
    ("5", 0x06, false),
    ("6", 0x07, false),
    ("7", 0x08, false),
    ("8", 0x09, false),
    ("9", 0x0a, false),
    ("0", 0x0b, false),
    ("minus", 0x0c, false),
    ("equal", 0x0d, false),
    ("backspace", 0x0e, false),
    ("tab", 0x0f, false),
    ("q", 0x10, false),
    ("w", 0x11, false),
    ("e", 0x12, false),
    ("r", 0x13, false),
    ("t", 0x14, false),
    ("y", 0x15, false),
    ("u", 0x16, false),
    ("i", 0x17, false),
    ("o", 0x18, false),
    ("p", 0x19, false),
    ("bracket_left", 0x1a, false),
    ("bracket_right", 0x1b, false),
    ("ret", 0x1c, false),
    ("ctrl", 0x1d, false),
    ("a", 0x1e, false),
    ("s", 0x1f, false),
    ("d", 0x20, false),
    ("f", 0x21, false),
    ("g", 0x22, false),
    ("h", 0x23, false),
    ("j", 0x24, false),
    ("k", 0x25, false),
    ("l", 0x26, false),
    ("semicolon", 0x27, false),
    ("apostrophe", 0x28, false),
    ("grave_accent", 0x29, false),
    ("shift", 0x2a, false),
    ("backslash", 0x2b, false),
    ("z", 0x2c, false),
    ("x", 0x2d, false),
    ("c", 0x2e, false),
    ("v", 0x2f, false),
    ("b", 0x30, false),
    ("n", 0x31, false),
    ("m", 0x32, false),
    ("comma", 0x33, false),
    ("dot", 0x34, false),
    ("slash", 0x35, false),
    ("shift_r", 0x36, false),
    ("kp_multiply", 0x37, false),
    ("alt", 0x38, false),
    ("spc", 0x39, false),
    ("caps_lock", 0x3a, false),
    ("f1", 0x3b, false),
    ("f2", 0x3c, false),
    ("f3", 0x3d, false),
    ("f4", 0x3e, false),
    ("f5", 0x3f, false),
    ("f6", 0x40, false),
    ("f7", 0x41, false),
    ("f8", 0x42, false),
    ("f9", 0x43, false),
    ("f10", 0x44, false),
    ("num_lock", 0x45, false),
    ("scroll_lock", 0x46, false),
    ("f11", 0x57, false),
    ("f12", 0x58, false),
    ("ctrl_r", 0x1d, true),
    ("alt_r", 0x38, true),
    ("home", 0x47, true),
    ("up", 0x48, true),
    ("pgup", 0x49, true),
    ("left", 0x4b, true),
    ("right", 0x4d, true),
    ("end", 0x4f, true),
    ("down", 0x50, true),
    ("pgdn", 0x51, true),
    ("insert", 0x52, true),
    ("delete", 0x53, true),
    ("meta_l", 0x5b, true),
    ("meta_r", 0x5c, true),
    ("menu", 0x5d, true),
];

const EXTENDED: u8 = 0xe0;
const RELEASE: u8 = 0x80;

fn key(qcode: &str) -> Option<(u8, bool)> {
    KEYS.iter()
        .find(|(name, _, _)| *name == qcode)
        .map(|(_, code, extended)| (*code, *extended))
}

/// The scancodes for pressing `qcodes` together and letting go again (in
/// reverse order), as QEMU's send-key does; `Err` names an unknown key.
pub fn chord(qcodes: &[&str]) -> Result<Vec<u8>, String> {
    let keys = qcodes
        .iter()
        .map(|qcode| key(qcode).ok_or_else(|| format!("'{qcode}' is not a key vmpod knows")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut codes = Vec::new();
    for (code, extended) in &keys {
        if *extended {
            codes.push(EXTENDED);
        }
        codes.push(*code);
    }
    for (code, extended) in keys.iter().rev() {
        if *extended {
            codes.push(EXTENDED);
        }
        codes.push(code | RELEASE);
    }
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chord_presses_in_order_and_releases_in_reverse() {
        assert_eq!(chord(&["a"]), Ok(vec![0x1e, 0x9e]));
        assert_eq!(
            chord(&["ctrl", "alt", "delete"]),
            Ok(vec![0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d])
        );
        assert_eq!(
            chord(&["hyper"]),
            Err("'hyper' is not a key vmpod knows".to_owned())
        );
    }
}
