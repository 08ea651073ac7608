//! TFTP packets and options: any datagram to port 69 or to a transfer port.
//!
//! Oracles: no panic; a packet that parses emits bytes that parse back to the same packet
//! (RFC 1350 allows trailing NUL padding, which parsing drops); option negotiation stays
//! within RFC 2347/2348/2349/7440 bounds and the server's limits, echoes each option once,
//! and the values it echoes are the ones it uses.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zpxe_engine::tftp::options::{self, Limits, MAX_BLKSIZE, MIN_BLKSIZE};
use zpxe_engine::tftp::wire::{Packet, TftpRepr};

/// Options as parsing returns them from emitted bytes: trailing empty pairs are padding.
fn normalized<'a>(options: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = options.to_vec();
    while v.last() == Some(&("", "")) {
        v.pop();
    }
    v
}

const LIMITS: [Limits; 3] = [
    Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        max_timeout: Duration::from_secs(10),
        msftwindow: true,
    },
    Limits {
        max_blksize: MAX_BLKSIZE,
        max_windowsize: 1,
        max_timeout: Duration::from_secs(255),
        msftwindow: false,
    },
    Limits {
        max_blksize: MIN_BLKSIZE,
        max_windowsize: u16::MAX,
        max_timeout: Duration::from_secs(1),
        msftwindow: true,
    },
];

fuzz_target!(|data: &[u8]| {
    // The checked view agrees with the parsed form on the fixed fields.
    let Ok(view) = Packet::new_checked(data) else {
        assert!(TftpRepr::parse_bytes(data).is_err());
        return;
    };
    let Ok(packet) = TftpRepr::parse(&view) else {
        return;
    };
    match &packet {
        TftpRepr::Data { block, .. } | TftpRepr::Ack { block, .. } => {
            assert_eq!(view.block(), *block)
        }
        TftpRepr::Error { code, .. } => assert_eq!(view.error_code(), *code),
        _ => {}
    }
    let mut buf = vec![0u8; data.len() + 8];
    let n = packet
        .emit(&mut buf)
        .expect("a parsed packet fits in its own length plus a terminator");
    assert_eq!(n, packet.buffer_len(), "emit wrote other than buffer_len()");
    let again = TftpRepr::parse_bytes(&buf[..n]).expect("an emitted packet parses");
    let expected = match &packet {
        TftpRepr::Rrq(r) | TftpRepr::Wrq(r) => {
            let mut r = r.clone();
            r.options = normalized(&r.options);
            if matches!(packet, TftpRepr::Rrq(_)) {
                TftpRepr::Rrq(r)
            } else {
                TftpRepr::Wrq(r)
            }
        }
        TftpRepr::Oack { options } => TftpRepr::Oack {
            options: normalized(options),
        },
        other => other.clone(),
    };
    assert_eq!(again, expected, "parse -> emit -> parse changed the packet");

    let (TftpRepr::Rrq(req) | TftpRepr::Wrq(req)) = &packet else {
        return;
    };
    for (i, limits) in LIMITS.into_iter().enumerate() {
        let file_len = [0, 1_234_567, u64::MAX][i];
        let n = options::negotiate(&req.options, file_len, limits);
        // Unless the client asks, RFC 1350's 512 bytes apply.
        if n.oack.iter().any(|(k, _)| *k == "blksize") {
            assert!((MIN_BLKSIZE..=limits.max_blksize.max(MIN_BLKSIZE)).contains(&n.blksize));
        } else {
            assert_eq!(n.blksize, options::DEFAULT_BLKSIZE);
        }
        assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize.max(1));
        if let Some(t) = n.timeout {
            assert!(t >= Duration::from_secs(1) && t <= limits.max_timeout);
        }
        for (k, (name, value)) in n.oack.iter().enumerate() {
            assert!(
                n.oack[..k].iter().all(|(other, _)| other != name),
                "option {name} echoed twice: {:?}",
                n.oack
            );
            let used = match *name {
                "blksize" => n.blksize.to_string(),
                "windowsize" => n.windowsize.to_string(),
                "timeout" => n.timeout.map_or(0, |t| t.as_secs()).to_string(),
                "tsize" => file_len.to_string(),
                "msftwindow" => options::MSFT_WINDOW_REPLY.to_owned(),
                other => panic!("OACK echoes unknown option {other}"),
            };
            assert_eq!(
                value, &used,
                "OACK says {name}={value}, transfer uses {used}"
            );
        }
        // The OACK itself must fit in the smallest block a client accepts a reply in.
        let mut oack = [0u8; 512];
        let options = n.oack.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert!(TftpRepr::Oack { options }.emit(&mut oack).is_ok());
    }
});
