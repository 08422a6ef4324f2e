//! Fuzzes the SMTP listener's session: any bytes from a client get well-formed replies (three
//! digits, then a space or a dash), never a panic or a hang, and never more reply bytes than a
//! bounded multiple of the input. The broker is not connected, so every DATA that completes
//! is answered 451 (the relay would retry): the path through the dialogue is the real one.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tidings_common::Config;
use tidings_common::amqp::{SharedPublisher, Topology};
use tidings_inbound::smtp::{Ingress, bounded_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ingress() -> &'static Ingress {
    static INGRESS: OnceLock<Ingress> = OnceLock::new();
    INGRESS.get_or_init(|| {
        let config = Config::from_lookup(|name| match name {
            "TIDINGS_INBOUND_MAX_BYTES" => Some("65536".into()),
            _ => None,
        })
        .expect("default configuration");
        let topology = Topology::from_config(&config);
        Ingress::new(Arc::new(config), topology, SharedPublisher::default())
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let replies = runtime().block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let serve = bounded_session(server, ingress());
        let send = async {
            let _ = to_server.write_all(data).await;
            let _ = to_server.shutdown().await;
        };
        let receive = async {
            let mut replies = Vec::new();
            let _ = from_server.read_to_end(&mut replies).await;
            replies
        };
        let (_, _, replies) = tokio::join!(serve, send, receive);
        replies
    });
    // One reply per command at most, each short: bounded by the input.
    assert!(replies.len() <= 256 + data.len() * 64, "{} reply bytes for {} input bytes", replies.len(), data.len());
    let text = String::from_utf8(replies).expect("replies are ASCII");
    for line in text.split_terminator("\r\n") {
        let bytes = line.as_bytes();
        assert!(bytes.len() >= 4, "short reply {line:?}");
        assert!(bytes[..3].iter().all(u8::is_ascii_digit), "reply without a code: {line:?}");
        assert!(bytes[3] == b' ' || bytes[3] == b'-', "malformed reply {line:?}");
    }
});
