//! QMP codec tests: a client on one end of a socket pair, the test on the
//! other, and a command channel standing in for the VMM.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::api::{channel, Command, CommandReceiver, Event, SharedStatus};
use crate::spec::config::CpuTopology;

struct Session {
    client: QmpClient,
    peer: UnixStream,
    vm: VmControl,
    commands: CommandReceiver,
    received: Vec<u8>,
}

fn session() -> Session {
    let (ours, peer) = UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("non-blocking");
    peer.set_nonblocking(true).expect("non-blocking");
    let (sender, commands) = channel().expect("channel");
    let status = SharedStatus::default();
    status.set(Status::Running);
    let vm = VmControl {
        observer: None,
        display: None,
        pointer: Default::default(),
        name: "codec".into(),
        uuid: "00000000-0000-0000-0000-000000000001".into(),
        topology: CpuTopology {
            sockets: 1,
            cores: 2,
            threads: 1,
        },
        status,
        commands: sender,
        block_devices: Default::default(),
    };
    let client = QmpClient::new(ours, &vm);
    let mut session = Session {
        client,
        peer,
        vm,
        commands,
        received: Vec::new(),
    };
    let greeting = session.replies();
    assert_eq!(greeting.len(), 1);
    assert_eq!(greeting[0]["vmpod"]["vm"], "codec");
    session
}

impl Session {
    /// Sends raw bytes to the client, as it would read them.
    fn send(&mut self, bytes: &[u8]) {
        self.peer.write_all(bytes).expect("write");
        assert!(self.client.on_readable(&self.vm), "the client stays");
    }

    /// Everything the client answered since the last call, one value a line.
    fn replies(&mut self) -> Vec<Value> {
        assert!(self.client.outbox.flush());
        let mut chunk = [0u8; 65536];
        while let Ok(read) = self.peer.read(&mut chunk) {
            if read == 0 {
                break;
            }
            self.received.extend_from_slice(&chunk[..read]);
        }
        let text = String::from_utf8(std::mem::take(&mut self.received)).expect("UTF-8");
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n")
            .map(|line| serde_json::from_str(line).expect("one JSON value a line"))
            .collect()
    }

    fn negotiated() -> Session {
        let mut session = session();
        session.send(br#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(session.replies(), [json!({"return": {}})]);
        session
    }
}

#[test]
fn negotiation_comes_first_and_only_once() {
    let mut session = session();
    session.send(br#"{"execute":"query-status","id":1}"#);
    let reply = session.replies();
    assert_eq!(reply[0]["error"]["class"], "CommandNotFound");
    assert_eq!(reply[0]["id"], 1);
    session.send(br#"{"execute":"qmp_capabilities","arguments":{"enable":[]}}"#);
    session.send(br#"{"execute":"qmp_capabilities"}"#);
    let replies = session.replies();
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(replies[1]["error"]["class"], "CommandNotFound");
}

#[test]
fn ids_of_any_type_are_echoed() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"query-name","id":"a"}{"execute":"query-name","id":{"n":[1]}}"#);
    assert_eq!(
        session.replies(),
        [
            json!({"return": {"name": "codec"}, "id": "a"}),
            json!({"return": {"name": "codec"}, "id": {"n": [1]}}),
        ]
    );
}

#[test]
fn commands_split_anywhere_give_the_same_replies() {
    let script = b"{\"execute\":\"query-status\",\"id\":1}\n{ \"execute\" : \"query-uuid\" }{\"execute\":\"query-cpus-fast\",\"id\":3}";
    let mut whole = Session::negotiated();
    whole.send(script);
    let expected = whole.replies();
    assert_eq!(expected.len(), 3);
    assert_eq!(expected[0]["return"]["status"], "running");
    assert_eq!(expected[2]["return"].as_array().map(Vec::len), Some(2));
    let mut bytewise = Session::negotiated();
    for byte in script {
        bytewise.send(&[*byte]);
    }
    assert_eq!(bytewise.replies(), expected);
}

#[test]
fn a_bad_line_is_answered_and_the_next_line_is_served() {
    let mut session = Session::negotiated();
    session.send(b"{\"execute\": nonsense}\n{\"execute\":\"query-name\",\"id\":2}\n");
    let replies = session.replies();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["error"]["class"], "GenericError");
    assert!(replies[0]["error"]["desc"]
        .as_str()
        .is_some_and(|desc| desc.starts_with("JSON parse error")));
    assert_eq!(replies[1], json!({"return": {"name": "codec"}, "id": 2}));
}

#[test]
fn malformed_envelopes_get_qemus_errors() {
    let mut session = Session::negotiated();
    session.send(br#"[1] {"id":5} {"execute":"stop","arguments":[]} {"execute":"stop","extra":1} {"execute":"frobnicate"}"#);
    let descriptions: Vec<String> = session
        .replies()
        .iter()
        .map(|reply| reply["error"]["desc"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        descriptions,
        [
            "QMP input must be a JSON object",
            "QMP input lacks member 'execute'",
            "QMP input member 'arguments' must be an object",
            "QMP input member 'extra' is unexpected",
            "The command frobnicate has not been found",
        ]
    );
    assert!(
        session.commands.drain().is_empty(),
        "nothing reached the VMM"
    );
}

#[test]
fn input_without_an_end_is_discarded_up_to_the_next_line() {
    let mut session = Session::negotiated();
    let mut flood = b"{\"execute\":\"".to_vec();
    flood.resize(MAX_INPUT + 10, b'x');
    for chunk in flood.chunks(60_000) {
        session.send(chunk);
    }
    let replies = session.replies();
    assert_eq!(replies.len(), 1);
    assert!(replies[0]["error"]["desc"]
        .as_str()
        .is_some_and(|desc| desc.contains("without a complete JSON value")));
    session.send(b"still the same value\n{\"execute\":\"query-name\"}");
    assert_eq!(session.replies(), [json!({"return": {"name": "codec"}})]);
}

#[test]
fn stop_answers_when_the_vm_has_paused_and_later_commands_wait_behind_it() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"stop","id":"s"}{"execute":"query-name","id":"q"}"#);
    assert!(session.replies().is_empty(), "nothing before the VM paused");
    assert!(matches!(session.commands.drain()[..], [Command::Pause]));
    session.client.on_status(Status::Running, &session.vm);
    assert!(session.replies().is_empty(), "not the status it waits for");
    session.vm.status.set(Status::Paused);
    let stop_event = Timed::now(Event::Stop);
    session.client.send_event(&stop_event);
    session.client.on_status(Status::Paused, &session.vm);
    let replies = session.replies();
    assert_eq!(
        replies[0]["event"], "STOP",
        "the event comes first, as in QEMU"
    );
    assert_eq!(replies[1], json!({"return": {}, "id": "s"}));
    assert_eq!(replies[2], json!({"return": {"name": "codec"}, "id": "q"}));
}

#[test]
fn a_pending_answer_fails_when_the_vm_shuts_down() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"stop","id":7}"#);
    session.client.on_status(Status::Shutdown, &session.vm);
    let replies = session.replies();
    assert_eq!(replies[0]["id"], 7);
    assert_eq!(
        replies[0]["error"]["desc"],
        "the VM shut down before it was paused"
    );
}

#[test]
fn stop_on_a_paused_vm_answers_at_once() {
    let mut session = Session::negotiated();
    session.vm.status.set(Status::Paused);
    session.send(br#"{"execute":"stop"}{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}"#);
    assert_eq!(
        session.replies(),
        [
            json!({"return": {}}),
            json!({"return": "VM status: paused\r\n"})
        ]
    );
    assert!(session.commands.drain().is_empty());
}

#[test]
fn send_key_types_the_chord_on_the_keyboard() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"c"}]}}"#);
    assert_eq!(session.replies(), [json!({"return": {}})]);
    let commands = session.commands.drain();
    let [Command::Keys(keys)] = &commands[..] else {
        panic!("{commands:?}");
    };
    let names: Vec<(&str, bool)> = keys.iter().map(|k| (k.key.qcode, k.pressed)).collect();
    assert_eq!(
        names,
        [("ctrl", true), ("c", true), ("c", false), ("ctrl", false)]
    );
    session
        .send(br#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"hyper"}]}}"#);
    assert_eq!(
        session.replies()[0]["error"]["desc"],
        "'hyper' is not a key vmpod knows"
    );
}

#[test]
fn events_reach_only_negotiated_clients_with_a_timestamp() {
    let mut fresh = session();
    fresh.client.send_event(&Timed::now(Event::Powerdown));
    assert!(fresh.replies().is_empty());
    let mut session = Session::negotiated();
    session.client.send_event(&Timed::now(Event::Powerdown));
    let event = &session.replies()[0];
    assert_eq!(event["event"], "POWERDOWN");
    assert!(event["timestamp"]["seconds"]
        .as_u64()
        .is_some_and(|s| s > 0));
}

#[test]
fn a_disk_failure_is_a_block_io_error_event_in_qemus_shape() {
    let mut session = Session::negotiated();
    session
        .client
        .send_event(&Timed::now(Event::BlockIoError(crate::api::BlockIoError {
            device: "data".into(),
            operation: "write",
            nospace: true,
            reason: "No space left on device (os error 28)".into(),
        })));
    let event = &session.replies()[0];
    assert_eq!(event["event"], "BLOCK_IO_ERROR");
    assert_eq!(
        event["data"],
        json!({"device": "data", "node-name": "data", "operation": "write", "action": "report",
               "nospace": true, "reason": "No space left on device (os error 28)"})
    );
}

#[test]
fn query_block_lists_the_attached_disks_in_qemus_shape() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"query-block"}"#);
    assert_eq!(session.replies(), [json!({"return": []})]);
    session.vm.block_devices.set(vec![crate::api::BlockDevice {
        name: "data".into(),
        file: "/vm/volumes/data/disk.img".into(),
        backing_file: None,
        format: "raw",
        readonly: true,
        size_bytes: 1 << 30,
    }]);
    session.send(br#"{"execute":"query-block"}"#);
    let disks = session.replies()[0]["return"].clone();
    assert_eq!(disks[0]["device"], "data");
    assert_eq!(disks[0]["inserted"]["file"], "/vm/volumes/data/disk.img");
    assert_eq!(disks[0]["inserted"]["ro"], true);
    assert_eq!(disks[0]["inserted"]["drv"], "raw");
    assert_eq!(disks[0]["inserted"]["image"]["virtual-size"], 1u64 << 30);
    session
        .send(br#"{"execute":"human-monitor-command","arguments":{"command-line":"info block"}}"#);
    assert_eq!(
        session.replies(),
        [
            json!({"return": "data: /vm/volumes/data/disk.img (raw, read-only, 1073741824 bytes)\r\n"})
        ]
    );
}

#[test]
fn input_send_event_moves_the_pointer_and_presses_keys_in_order() {
    let mut session = Session::negotiated();
    session.send(
        br#"{"execute":"input-send-event","arguments":{"events":[
        {"type":"abs","data":{"axis":"x","value":100}},
        {"type":"abs","data":{"axis":"y","value":200}},
        {"type":"btn","data":{"down":true,"button":"left"}},
        {"type":"key","data":{"down":true,"key":{"type":"qcode","data":"a"}}},
        {"type":"key","data":{"down":false,"key":{"type":"number","data":211}}}]}}"#,
    );
    assert_eq!(session.replies(), [json!({"return": {}})]);
    let described: Vec<String> = session
        .commands
        .drain()
        .iter()
        .map(|command| match command {
            Command::Pointer(p) => format!("pointer {} {} {}", p.x, p.y, p.buttons),
            Command::Keys(keys) => format!("{} {}", keys[0].key.qcode, keys[0].pressed),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(described, ["pointer 100 200 1", "a true", "delete false"]);
    // The pointer keeps its place: a button alone comes where it was.
    session.send(br#"{"execute":"input-send-event","arguments":{"events":[{"type":"btn","data":{"down":false,"button":"left"}}]}}"#);
    session.replies();
    let [Command::Pointer(pointer)] = &session.commands.drain()[..] else {
        panic!("one pointer event");
    };
    assert_eq!((pointer.x, pointer.y, pointer.buttons), (100, 200, 0));
    for (events, error) in [
        (
            r#"[{"type":"rel","data":{"axis":"x","value":5}}]"#,
            "absolute tablet",
        ),
        (
            r#"[{"type":"btn","data":{"down":true,"button":"side"}}]"#,
            "not a button",
        ),
        (
            r#"[{"type":"abs","data":{"axis":"x","value":40000}}]"#,
            "0..32767",
        ),
        (
            r#"[{"type":"key","data":{"down":true,"key":{"type":"qcode","data":"hyper"}}}]"#,
            "not a key",
        ),
        (r#"[{"type":"wiggle"}]"#, "each event must be"),
    ] {
        let line = format!(r#"{{"execute":"input-send-event","arguments":{{"events":{events}}}}}"#);
        session.send(line.as_bytes());
        let reply = &session.replies()[0];
        let desc = reply["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(desc.contains(error), "{events}: {reply}");
    }
    assert!(
        session.commands.drain().is_empty(),
        "a bad list sends nothing"
    );
}

#[test]
fn screendump_writes_ppm_or_png_and_says_when_there_is_no_display() {
    let mut session = Session::negotiated();
    session.send(br#"{"execute":"screendump","arguments":{"filename":"/tmp/never.ppm"}}"#);
    let reply = &session.replies()[0];
    assert!(
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .contains("has no display"),
        "{reply}"
    );
    let size = crate::api::display::DisplaySize {
        width: 320,
        height: 200,
    };
    let display =
        std::sync::Arc::new(crate::api::display::Framebuffer::new(size).expect("framebuffer"));
    display.draw(&[0x00ff_8000; 320 * 200]);
    session.vm.display = Some(display);
    let dir = std::env::temp_dir().join(format!("vmpod-screendump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ppm = dir.join("screen.ppm");
    let png = dir.join("screen.png");
    let line = format!(
        r#"{{"execute":"screendump","arguments":{{"filename":"{}"}}}}"#,
        ppm.display()
    );
    session.send(line.as_bytes());
    assert_eq!(session.replies(), [json!({"return": {}})]);
    let image = std::fs::read(&ppm).expect("written");
    assert!(image.starts_with(b"P6\n320 200\n255\n\xff\x80\x00"));
    assert_eq!(image.len(), 15 + 320 * 200 * 3);
    let line = format!(
        r#"{{"execute":"screendump","arguments":{{"filename":"{}","format":"png"}}}}"#,
        png.display()
    );
    session.send(line.as_bytes());
    assert_eq!(session.replies(), [json!({"return": {}})]);
    assert!(std::fs::read(&png)
        .expect("written")
        .starts_with(b"\x89PNG"));
    let monitor = crate::control::hmp::run(
        &format!("screendump {}/monitor.png", dir.display()),
        &session.vm,
    );
    assert_eq!(monitor.text, "");
    assert!(std::fs::read(dir.join("monitor.png"))
        .expect("written")
        .starts_with(b"\x89PNG"));
    let failed = crate::control::hmp::run("screendump /nonexistent/dir/x.ppm", &session.vm);
    assert!(
        failed
            .text
            .starts_with("Could not open '/nonexistent/dir/x.ppm'"),
        "{}",
        failed.text
    );
    session.send(br#"{"execute":"screendump","arguments":{"filename":"x","format":"bmp"}}"#);
    assert!(session.replies()[0]["error"]["desc"]
        .as_str()
        .unwrap_or_default()
        .contains("'bmp'"));
    std::fs::remove_dir_all(&dir).ok();
}
