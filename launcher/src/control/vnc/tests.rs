//! The VNC server's pieces against a viewer written here from RFC 6143:
//! it decodes Raw, CopyRect and ZRLE back into pixels, which must be the
//! screen's, for random screens and for screens like a text console.

use super::encode::{self, Rect};
use super::rfb::{encoding, ClientMessage, PixelFormat};
use super::session::Session;
use super::test_viewer::{console_screen, frame_of, random_screen, whole_screen, Viewer};
use crate::api::Command;

use super::rfb::tests::RGB565;

const BGR233: PixelFormat = PixelFormat {
    bits_per_pixel: 8,
    depth: 8,
    big_endian: false,
    true_colour: true,
    red_max: 7,
    green_max: 7,
    blue_max: 3,
    red_shift: 0,
    green_shift: 3,
    blue_shift: 6,
};

#[test]
fn every_encoder_decodes_back_to_the_screen_in_every_format() {
    let (width, height) = (200, 130); // tiles cut at the edges
    for format in [
        PixelFormat::NATIVE,
        RGB565,
        BGR233,
        PixelFormat {
            big_endian: true,
            ..PixelFormat::NATIVE
        },
    ] {
        for (name, screen) in [
            ("random", random_screen(width, height, 7)),
            ("console", console_screen(width, height, 3)),
            ("black", vec![0; width * height]),
        ] {
            let frame = frame_of(&screen, width, height);
            let whole = whole_screen(width, height);
            let part = Rect {
                x: 13,
                y: 70,
                width: 150,
                height: 60,
            };
            let mut zrle = encode::Zrle::default();
            for kind in [encoding::RAW, encoding::ZRLE] {
                let mut viewer = Viewer::new(format, width, height);
                for rect in [whole, part] {
                    let mut message = vec![0, 0, 0, 1];
                    super::rfb::server::rectangle(
                        &mut message,
                        rect.x as u16,
                        rect.y as u16,
                        rect.width as u16,
                        rect.height as u16,
                        kind,
                    );
                    if kind == encoding::RAW {
                        encode::raw(frame, rect, &format, &mut message);
                    } else {
                        zrle.encode(frame, rect, &format, &mut message);
                    }
                    assert_eq!(viewer.apply(&message), message.len(), "{name} {kind}");
                }
                viewer.expect_shows(&screen);
            }
        }
    }
}

#[test]
fn zrle_makes_a_console_screen_small() {
    let (width, height) = (1024, 768);
    let screen = console_screen(width, height, 11);
    let frame = frame_of(&screen, width, height);
    let whole = whole_screen(width, height);
    let mut out = Vec::new();
    encode::Zrle::default().encode(frame, whole, &PixelFormat::NATIVE, &mut out);
    assert!(out.len() < width * height * 4 / 20, "{} bytes", out.len());
}

#[test]
fn damage_covers_every_change_and_nothing_when_idle() {
    let (width, height) = (300, 200);
    let old = console_screen(width, height, 5);
    let mut new = old.clone();
    let whole = whole_screen(width, height);
    assert!(encode::damage(
        frame_of(&old, width, height),
        frame_of(&new, width, height),
        whole
    )
    .is_empty());
    new[150 * width + 299] ^= 1;
    new[3] ^= 1;
    let rects = encode::damage(
        frame_of(&old, width, height),
        frame_of(&new, width, height),
        whole,
    );
    assert_eq!(rects.len(), 2, "{rects:?}");
    assert!(rects.iter().any(|r| r.x == 0 && r.y == 0 && r.width == 64));
    assert!(rects
        .iter()
        .any(|r| r.x == 256 && r.y == 128 && r.width == 44 && r.height == 64));
}

#[test]
fn a_scrolled_console_is_found_as_one_band() {
    let (width, height) = (320, 240);
    let old = console_screen(width, height, 9);
    let mut new = old.clone();
    new.copy_within(16 * width..(height - 16) * width, 0); // up one line
    for pixel in &mut new[(height - 32) * width..(height - 16) * width] {
        *pixel = 0x0000_00aa;
    }
    let band = encode::find_scroll(frame_of(&old, width, height), frame_of(&new, width, height))
        .expect("a scroll");
    assert_eq!(band.source_y, band.y + 16);
    assert!(band.height >= height - 48, "{band:?}");
    let mut moved = old.clone();
    encode::apply_scroll(&mut moved, width, band);
    for y in band.y..band.y + band.height {
        assert_eq!(
            moved[y * width..(y + 1) * width],
            new[y * width..(y + 1) * width]
        );
    }
    assert_eq!(
        encode::find_scroll(frame_of(&old, width, height), frame_of(&old, width, height)),
        None
    );
}

/// Runs a session through the 3.8 handshake with a viewer that wants
/// `encodings`; returns it and what the server said after ServerInit.
fn connected(width: usize, height: usize, encodings: Vec<i32>) -> Session {
    let mut out = Vec::new();
    let mut session = Session::new(width, height, "vm", &mut out);
    assert_eq!(out, b"RFB 003.008\n");
    let mut commands = Vec::new();
    out.clear();
    session
        .receive(b"RFB 003.008\n", &mut out, &mut commands)
        .expect("version");
    assert_eq!(out, [1, 1], "one security type: None");
    out.clear();
    session
        .receive(&[1], &mut out, &mut commands)
        .expect("security");
    assert_eq!(out, [0, 0, 0, 0], "SecurityResult OK");
    out.clear();
    session
        .receive(&[1], &mut out, &mut commands)
        .expect("init");
    assert_eq!(
        &out[..4],
        [
            (width >> 8) as u8,
            width as u8,
            (height >> 8) as u8,
            height as u8
        ]
    );
    assert_eq!(&out[out.len() - 6..], b"\0\0\0\x02vm");
    let message = super::rfb::tests::encode(&ClientMessage::SetEncodings(encodings));
    session
        .receive(&message, &mut out, &mut commands)
        .expect("encodings");
    assert!(commands.is_empty());
    session
}

fn request(session: &mut Session, incremental: bool, width: u16, height: u16) {
    let message = super::rfb::tests::encode(&ClientMessage::UpdateRequest {
        incremental,
        x: 0,
        y: 0,
        width,
        height,
    });
    session
        .receive(&message, &mut Vec::new(), &mut Vec::new())
        .expect("request");
}

#[test]
fn a_session_sends_the_screen_then_only_changes_then_nothing_while_idle() {
    let (width, height) = (256, 192);
    let mut session = connected(
        width,
        height,
        vec![encoding::ZRLE, encoding::COPY_RECT, encoding::RAW],
    );
    let mut viewer = Viewer::new(PixelFormat::NATIVE, width, height);
    let mut screen = console_screen(width, height, 1);
    assert!(
        !session.update(frame_of(&screen, width, height), &mut Vec::new()),
        "no request yet"
    );
    request(&mut session, true, width as u16, height as u16);
    let mut out = Vec::new();
    assert!(session.update(frame_of(&screen, width, height), &mut out));
    viewer.apply(&out);
    viewer.expect_shows(&screen);
    // Idle: a request waits, and nothing is sent.
    request(&mut session, true, width as u16, height as u16);
    assert!(!session.update(frame_of(&screen, width, height), &mut Vec::new()));
    assert!(session.wants_update());
    // A change: only its tile goes.
    screen[100 * width + 100] = 0x00ff_0000;
    out.clear();
    viewer.rectangles.clear();
    assert!(session.update(frame_of(&screen, width, height), &mut out));
    viewer.apply(&out);
    viewer.expect_shows(&screen);
    assert_eq!(viewer.rectangles.len(), 1);
    assert!(out.len() < 200, "{} bytes for one pixel", out.len());
    // A scroll: one CopyRect and the new line.
    screen.copy_within(16 * width.., 0);
    request(&mut session, true, width as u16, height as u16);
    out.clear();
    viewer.rectangles.clear();
    assert!(session.update(frame_of(&screen, width, height), &mut out));
    viewer.apply(&out);
    viewer.expect_shows(&screen);
    assert_eq!(
        viewer.rectangles[0].1,
        encoding::COPY_RECT,
        "{:?}",
        viewer.rectangles
    );
    // A full request sends the area even when nothing changed.
    request(&mut session, false, 10, 10);
    out.clear();
    viewer.rectangles.clear();
    assert!(session.update(frame_of(&screen, width, height), &mut out));
    viewer.apply(&out);
    assert_eq!(
        viewer.rectangles[0].0,
        Rect {
            x: 0,
            y: 0,
            width: 10,
            height: 10
        }
    );
}

#[test]
fn keys_and_the_pointer_become_commands() {
    let mut session = connected(1024, 768, vec![encoding::RAW]);
    let mut commands = Vec::new();
    let mut bytes = Vec::new();
    for message in [
        ClientMessage::Key {
            down: true,
            keysym: 0x61,
        },
        ClientMessage::Key {
            down: false,
            keysym: 0x61,
        },
        ClientMessage::Key {
            down: true,
            keysym: 0x1234_5678,
        },
        ClientMessage::Pointer {
            buttons: 1,
            x: 1023,
            y: 0,
        },
        ClientMessage::Pointer {
            buttons: 1,
            x: 1023,
            y: 0,
        },
        ClientMessage::CutText { length: 5 },
    ] {
        bytes.extend(super::rfb::tests::encode(&message));
    }
    bytes.extend(b"hello");
    bytes.extend(super::rfb::tests::encode(&ClientMessage::Key {
        down: true,
        keysym: 0xff0d,
    }));
    // Byte by byte, as a slow network delivers it.
    for byte in bytes {
        session
            .receive(&[byte], &mut Vec::new(), &mut commands)
            .expect("valid");
    }
    let described: Vec<String> = commands
        .iter()
        .map(|command| match command {
            Command::Keys(keys) => keys
                .iter()
                .map(|k| format!("{}{}", if k.pressed { "+" } else { "-" }, k.key.qcode))
                .collect::<Vec<_>>()
                .join(" "),
            Command::Pointer(pointer) => {
                format!("pointer {} {} {}", pointer.x, pointer.y, pointer.buttons)
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        described,
        ["+a -a", "pointer 32767 0 1", "+ret"],
        "keys in a row go as one command"
    );
}

#[test]
fn older_viewers_get_their_handshakes() {
    for (version, after_version, after_security) in [
        (&b"RFB 003.003\n"[..], vec![0, 0, 0, 1], None::<Vec<u8>>),
        (&b"RFB 003.007\n"[..], vec![1, 1], Some(vec![])),
    ] {
        let mut out = Vec::new();
        let mut session = Session::new(640, 480, "old", &mut out);
        out.clear();
        session
            .receive(version, &mut out, &mut Vec::new())
            .expect("version");
        assert_eq!(out, after_version);
        if let Some(expected) = after_security {
            out.clear();
            session
                .receive(&[1], &mut out, &mut Vec::new())
                .expect("security");
            assert_eq!(out, expected, "3.7 has no SecurityResult for None");
        }
        out.clear();
        session
            .receive(&[0], &mut out, &mut Vec::new())
            .expect("init");
        assert_eq!(&out[..4], [2, 128, 1, 224]);
    }
}

#[test]
fn broken_viewers_are_refused_with_the_reason() {
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\n", "not an RFB protocol version"),
        (b"RFB 003.008\n\x02", "security type 2"),
        (b"RFB 003.008\n\x01\x01\x63", "message type 99"),
        (
            b"RFB 003.008\n\x01\x01\x03\x00\x10\x00\x00\x00\x00\x01\x00\x01",
            "outside the 640x480 screen",
        ),
    ];
    for (bytes, reason) in cases {
        let mut session = Session::new(640, 480, "vm", &mut Vec::new());
        let refusal = session
            .receive(bytes, &mut Vec::new(), &mut Vec::new())
            .expect_err(reason);
        assert!(refusal.contains(reason), "{refusal}");
    }
    let mut session = connected(640, 480, vec![]);
    let mut colour_map = PixelFormat::NATIVE;
    colour_map.true_colour = false;
    let message = super::rfb::tests::encode(&ClientMessage::SetPixelFormat(colour_map));
    let refusal = session
        .receive(&message, &mut Vec::new(), &mut Vec::new())
        .expect_err("colour map");
    assert!(refusal.contains("colour-map"), "{refusal}");
}

#[test]
fn a_frame_timer_disarmed_after_it_fired_does_not_block_its_reader() {
    // What happens when a viewer served in the same epoll batch stops the
    // timer that epoll has just reported: the read must return, not wait.
    let mut timer = super::frame_timer().expect("timer");
    timer
        .reset(std::time::Duration::from_millis(1), None)
        .expect("arm");
    std::thread::sleep(std::time::Duration::from_millis(20));
    timer.clear().expect("disarm");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = timer.wait();
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .is_ok(),
        "reading the disarmed timer blocked"
    );
}
