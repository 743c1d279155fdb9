//! The WebSocket handshake, subprotocols, tokens, SHA-1 and frames.

use super::*;

fn request(extra: &str) -> Request {
    parse_request(&format!(
        "GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ))
    .expect("parses")
}

#[test]
fn sha1_matches_the_standards_examples() {
    let hex = |digest: [u8; 20]| {
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        hex(sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    let long = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(
        hex(sha1(long.as_bytes())),
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
    );
}

#[test]
fn the_handshake_answers_as_rfc_6455_shows_and_picks_a_subprotocol() {
    let plain = answer(&request(""), None).expect("accepted");
    assert!(
        plain.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{plain}"
    );
    assert!(!plain.contains("Sec-WebSocket-Protocol"));
    let kubevirt = answer(
        &request("Sec-WebSocket-Protocol: plain.kubevirt.io\r\n"),
        None,
    )
    .expect("accepted");
    assert!(kubevirt.contains("Sec-WebSocket-Protocol: plain.kubevirt.io\r\n"));
    let novnc =
        answer(&request("Sec-WebSocket-Protocol: binary, base64\r\n"), None).expect("accepted");
    assert!(novnc.contains("Sec-WebSocket-Protocol: binary\r\n"));
    let (status, _) = answer(&request("Sec-WebSocket-Protocol: base64\r\n"), None)
        .expect_err("no common protocol");
    assert_eq!(status, "400 Bad Request");
}

#[test]
fn paths_and_tokens_are_checked() {
    let mut kubevirt = request("");
    kubevirt.path =
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/demo/vnc"
            .into();
    assert!(answer(&kubevirt, None).is_ok());
    kubevirt.path = "/api/v1/secrets".into();
    assert_eq!(
        answer(&kubevirt, None).expect_err("elsewhere").0,
        "404 Not Found"
    );
    assert_eq!(
        answer(&request(""), Some("sesame"))
            .expect_err("no token")
            .0,
        "401 Unauthorized"
    );
    assert!(answer(&request("Authorization: Bearer sesame\r\n"), Some("sesame")).is_ok());
    assert!(answer(&request("Authorization: Bearer wrong\r\n"), Some("sesame")).is_err());
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("sesame");
    let browser = request(&format!(
        "Sec-WebSocket-Protocol: binary, {BEARER_PROTOCOL}{encoded}\r\n"
    ));
    let response = answer(&browser, Some("sesame")).expect("the subprotocol carries the token");
    assert!(
        response.contains("Sec-WebSocket-Protocol: binary\r\n") && !response.contains("bearer")
    );
    let mut query = request("");
    query.query = "token=sesame".into();
    assert!(answer(&query, Some("sesame")).is_ok());
    let mut plain_http = request("");
    plain_http.upgrade = false;
    assert_eq!(
        answer(&plain_http, None).expect_err("not an upgrade").0,
        "426 Upgrade Required"
    );
    assert!(parse_request("POST / HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn frames_are_unmasked_bounded_and_waited_for() {
    let payload = b"RFB 003.008\n";
    let mask = [1, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for cut in 0..frame.len() {
        assert_eq!(parse_frame(&frame[..cut]), Ok(None));
    }
    let (parsed, used) = parse_frame(&frame).expect("valid").expect("complete");
    assert_eq!(
        (parsed.opcode, parsed.payload.as_slice(), used),
        (BINARY, &payload[..], frame.len())
    );
    assert!(parse_frame(&[0x82, 0x05, 1, 2, 3, 4, 5])
        .expect_err("unmasked")
        .contains("unmasked"));
    let mut huge = vec![0x82, 0xff];
    huge.extend(u64::MAX.to_be_bytes());
    assert!(parse_frame(&huge).expect_err("huge").contains("at most"));
    assert_eq!(frame_head(BINARY, 5), [0x82, 5]);
    assert_eq!(frame_head(BINARY, 300), [0x82, 126, 1, 44]);
    assert_eq!(frame_head(BINARY, 70000)[..2], [0x82, 127]);
}
