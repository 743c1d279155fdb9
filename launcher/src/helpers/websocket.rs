//! `vmpod vnc --websocket ADDR:PORT`: the VM's VNC socket served as RFB
//! over WebSocket (RFC 6455) in binary frames, for browser viewers (noVNC)
//! and for clients of KubeVirt's `…/virtualmachineinstances/NAME/vnc`
//! subresource, reached through `kubectl port-forward`.
//!
//! Subprotocols `plain.kubevirt.io` (KubeVirt's), `binary` (noVNC,
//! websockify) or none; paths `/`, `/websockify` and KubeVirt's
//! subresource path. Bound to a loopback address unless a bearer token is
//! given, which every connection must then present: an `Authorization:
//! Bearer` header, Kubernetes' `base64url.bearer.authorization.k8s.io.`
//! subprotocol (what browsers can send), or `?token=`.
//!
//! One thread per connection, at most [`MAX_CONNECTIONS`]; each relays
//! between its TCP socket and its own connection to `vnc.sock`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

/// At most this many browser viewers at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The largest HTTP request and the largest frame a viewer may send.
const MAX_REQUEST: usize = 16 * 1024;
const MAX_FRAME: u64 = 2 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const BEARER_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";
const PROTOCOLS: [&str; 2] = ["plain.kubevirt.io", "binary"];

#[derive(Debug, thiserror::Error)]
pub enum WebSocketError {
    #[error("{address} is not a loopback address, so the VNC WebSocket needs a token: give --token-file FILE (or VMPOD_VNC_TOKEN)")]
    TokenNeeded { address: SocketAddr },
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where to listen, and the token connections must present.
pub struct Options {
    pub address: SocketAddr,
    pub token: Option<String>,
    pub run_dir: PathBuf,
}

/// Reads a token file: its first line, trimmed; empty is no token.
pub fn read_token(path: &Path) -> Result<Option<String>, WebSocketError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebSocketError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    Ok((!token.is_empty()).then_some(token))
}

/// Serves until the process is stopped.
pub fn serve(options: Options) -> Result<(), WebSocketError> {
    if !options.address.ip().is_loopback() && options.token.is_none() {
        return Err(WebSocketError::TokenNeeded {
            address: options.address,
        });
    }
    let listener = TcpListener::bind(options.address).map_err(|source| WebSocketError::Listen {
        address: options.address,
        source,
    })?;
    log::info!(
        "serving the VM's VNC as WebSocket on ws://{}/ (subprotocols {}; token {})",
        listener.local_addr().unwrap_or(options.address),
        PROTOCOLS.join(", "),
        if options.token.is_some() {
            "required"
        } else {
            "not required on loopback"
        }
    );
    let open = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(options);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = refuse(
                &mut stream,
                "503 Service Unavailable",
                "too many VNC viewers are connected",
            );
            continue;
        }
        let (counted, options) = (open.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name("websocket".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                match connection(stream, &options) {
                    Ok(()) => log::info!("VNC WebSocket viewer {peer} left"),
                    Err(why) => log::warn!("VNC WebSocket viewer {peer}: {why}"),
                }
                counted.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

fn refuse(stream: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("{why}\n");
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The parts of an upgrade request vmpod looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: String,
    pub key: Option<String>,
    pub version: Option<String>,
    pub upgrade: bool,
    pub protocols: Vec<String>,
    pub authorization: Option<String>,
}

/// Reads the request's head (up to the blank line) from `text`.
pub fn parse_request(text: &str) -> Result<Request, String> {
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut words = first.split(' ');
    let (Some("GET"), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err(format!("not a WebSocket request: {first:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.1: {first:?}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        path: path.to_owned(),
        query: query.to_owned(),
        ..Request::default()
    };
    for line in lines.take_while(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a malformed header: {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => request.upgrade = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => request.key = Some(value.to_owned()),
            "sec-websocket-version" => request.version = Some(value.to_owned()),
            "sec-websocket-protocol" => request.protocols.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty()),
            ),
            "authorization" => request.authorization = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(request)
}

/// Whether `path` is one vmpod serves RFB on.
fn path_served(path: &str) -> bool {
    if path == "/" || path == "/websockify" {
        return true;
    }
    // /apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/vnc
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["apis", "subresources.kubevirt.io", version, "namespaces", namespace, "virtualmachineinstances", name, "vnc"]
            if version.starts_with('v') && !namespace.is_empty() && !name.is_empty()
    )
}

/// The token the request presents, in any of the three ways.
fn presented_token(request: &Request) -> Option<String> {
    if let Some(token) = request
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_owned());
    }
    for protocol in &request.protocols {
        if let Some(encoded) = protocol.strip_prefix(BEARER_PROTOCOL) {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()?;
            return String::from_utf8(decoded).ok();
        }
    }
    request
        .query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_owned)
}

/// Checks an upgrade request; the response head to send, or why not
/// (an HTTP status and a reason).
pub fn answer(request: &Request, token: Option<&str>) -> Result<String, (&'static str, String)> {
    if !path_served(&request.path) {
        return Err((
            "404 Not Found",
            format!(
                "nothing is served at {}; use / (or KubeVirt's …/virtualmachineinstances/NAME/vnc)",
                request.path
            ),
        ));
    }
    let (true, Some(key)) = (request.upgrade, &request.key) else {
        return Err((
            "426 Upgrade Required",
            "this is a WebSocket endpoint (RFB in binary frames)".into(),
        ));
    };
    if request.version.as_deref() != Some("13") {
        return Err((
            "426 Upgrade Required",
            "only WebSocket version 13 is spoken".into(),
        ));
    }
    if let Some(expected) = token {
        if !presented_token(request)
            .is_some_and(|given| constant_time_equal(given.as_bytes(), expected.as_bytes()))
        {
            return Err(("401 Unauthorized", "a bearer token is required".into()));
        }
    }
    let offered: Vec<&String> = request
        .protocols
        .iter()
        .filter(|p| !p.starts_with(BEARER_PROTOCOL))
        .collect();
    let chosen = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == p));
    if chosen.is_none() && !offered.is_empty() {
        return Err((
            "400 Bad Request",
            format!(
                "none of the subprotocols {offered:?} is spoken here ({})",
                PROTOCOLS.join(", ")
            ),
        ));
    }
    let accept = base64::engine::general_purpose::STANDARD
        .encode(sha1(format!("{key}{ACCEPT_GUID}").as_bytes()));
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = chosen {
        head.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head)
}

fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// SHA-1 (FIPS 180-4), for the handshake's accept value only.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut state: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend((data.len() as u64 * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (index, word) in block.chunks(4).enumerate() {
            w[index] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for index in 16..80 {
            w[index] = (w[index - 3] ^ w[index - 8] ^ w[index - 14] ^ w[index - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = state;
        for (index, word) in w.iter().enumerate() {
            let (f, k) = match index {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let next = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, next);
        }
        for (slot, value) in state.iter_mut().zip([a, b, c, d, e]) {
            *slot = slot.wrapping_add(value);
        }
    }
    let mut digest = [0u8; 20];
    for (chunk, value) in digest.chunks_mut(4).zip(state) {
        chunk.copy_from_slice(&value.to_be_bytes());
    }
    digest
}

/// Opcodes (RFC 6455, 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// A frame's head as sent by the server (never masked).
pub fn frame_head(opcode: u8, length: usize) -> Vec<u8> {
    let mut head = vec![0x80 | opcode];
    match length {
        0..=125 => head.push(length as u8),
        126..=0xffff => {
            head.push(126);
            head.extend((length as u16).to_be_bytes());
        }
        _ => {
            head.push(127);
            head.extend((length as u64).to_be_bytes());
        }
    }
    head
}

/// One frame from a viewer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Reads one complete frame from the start of `input`: `Ok(None)` while it
/// is incomplete, else the frame and how many bytes it took.
pub fn parse_frame(input: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if input.len() < 2 {
        return Ok(None);
    }
    let opcode = input[0] & 0x0f;
    if input[1] & 0x80 == 0 {
        return Err("sent an unmasked frame (a client must mask)".into());
    }
    let (length, mut at) = match input[1] & 0x7f {
        126 if input.len() >= 4 => (u64::from(u16::from_be_bytes([input[2], input[3]])), 4),
        127 if input.len() >= 10 => (
            u64::from_be_bytes(input[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        short => (u64::from(short), 2),
    };
    if length > MAX_FRAME {
        return Err(format!("sent a {length}-byte frame (at most {MAX_FRAME})"));
    }
    let length = length as usize;
    if input.len() < at + 4 + length {
        return Ok(None);
    }
    let mask = [input[at], input[at + 1], input[at + 2], input[at + 3]];
    at += 4;
    let payload = input[at..at + length]
        .iter()
        .enumerate()
        .map(|(index, byte)| byte ^ mask[index % 4])
        .collect();
    Ok(Some((Frame { opcode, payload }, at + length)))
}

/// Serves one viewer: the handshake, then frames both ways.
fn connection(mut stream: TcpStream, options: &Options) -> Result<(), String> {
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream
            .read(&mut buffer)
            .map_err(|e| format!("the handshake failed: {e}"))?;
        if read == 0 {
            return Err("it closed during the handshake".into());
        }
        head.extend_from_slice(&buffer[..read]);
        if head.len() > MAX_REQUEST {
            let _ = refuse(
                &mut stream,
                "431 Request Header Fields Too Large",
                "the request is too large",
            );
            return Err("sent a request larger than 16 KiB".into());
        }
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let request = parse_request(&String::from_utf8_lossy(&head[..end]))?;
    let response = match answer(&request, options.token.as_deref()) {
        Ok(response) => response,
        Err((status, why)) => {
            let _ = refuse(&mut stream, status, &why);
            return Err(format!("refused ({status}): {why}"));
        }
    };
    let socket_path = options.run_dir.join(crate::api::VNC_SOCKET);
    let mut vnc = match UnixStream::connect(&socket_path) {
        Ok(vnc) => vnc,
        Err(error) => {
            let why = format!("cannot reach {}: {error}", socket_path.display());
            let _ = refuse(&mut stream, "502 Bad Gateway", &why);
            return Err(why);
        }
    };
    stream
        .write_all(response.as_bytes())
        .map_err(|e| e.to_string())?;
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    relay(&mut stream, &mut vnc, head[end..].to_vec())
}

fn relay(stream: &mut TcpStream, vnc: &mut UnixStream, mut input: Vec<u8>) -> Result<(), String> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // Whole frames already here go to vnc.sock first.
        while let Some((frame, used)) = parse_frame(&input)? {
            input.drain(..used);
            match frame.opcode {
                BINARY | TEXT | CONTINUATION => vnc
                    .write_all(&frame.payload)
                    .map_err(|e| format!("vnc.sock: {e}"))?,
                PING => {
                    let mut pong = frame_head(PONG, frame.payload.len());
                    pong.extend(&frame.payload);
                    stream.write_all(&pong).map_err(|e| e.to_string())?;
                }
                PONG => {}
                CLOSE => {
                    let _ = stream.write_all(&frame_head(CLOSE, 0));
                    return Ok(());
                }
                other => {
                    return Err(format!(
                        "sent opcode {other}, which WebSocket does not define"
                    ))
                }
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: vnc.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error.to_string());
        }
        if fds[1].revents != 0 {
            let read = vnc
                .read(&mut buffer)
                .map_err(|e| format!("vnc.sock: {e}"))?;
            if read == 0 {
                let _ = stream.write_all(&frame_head(CLOSE, 0));
                return Ok(());
            }
            let mut frame = frame_head(BINARY, read);
            frame.extend_from_slice(&buffer[..read]);
            stream.write_all(&frame).map_err(|e| e.to_string())?;
        }
        if fds[0].revents != 0 {
            let read = stream.read(&mut buffer).map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(());
            }
            input.extend_from_slice(&buffer[..read]);
        }
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
