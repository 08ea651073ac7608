//! Micro-benchmarks of the engine's hot paths. Run: `cargo bench -p zpxe-bench --bench engine`.
//!
//! Each bench drives the sans-IO machine exactly as the platform does (handle a datagram, poll
//! every transmit), with no sockets: what is measured is parse + policy + reply building.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use zpxe_engine::dhcp::{
    DhcpClient, DhcpClientConfig, DhcpPort, MacAddr, ProxyDhcp, ProxyDhcpConfig,
};
use zpxe_engine::http::range;
use zpxe_engine::http::request::{HeadLimits, Request};
use zpxe_engine::path::{NameFlavor, sanitize};
use zpxe_engine::tftp::wire::{ErrorCode, Request as TftpRequest, TftpRepr};
use zpxe_engine::tftp::{Local, TftpServer, TftpServerConfig};
use zpxe_engine::{DatagramMeta, MemoryCatalog, Payload};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn paths(c: &mut Criterion) {
    c.bench_function("path/sanitize tftp \\Boot\\BCD", |b| {
        b.iter(|| sanitize(black_box("\\Boot\\BCD"), NameFlavor::Tftp))
    });
    c.bench_function("path/sanitize http encoded", |b| {
        b.iter(|| sanitize(black_box("/sources/boot%20x64/boot.wim"), NameFlavor::Http))
    });
}

fn meta(remote: SocketAddr) -> DatagramMeta {
    DatagramMeta {
        remote,
        local_ip: Some(IpAddr::V4(SERVER)),
        ifindex: Some(2),
    }
}

fn client_config(ipxe: bool) -> DhcpClientConfig {
    DhcpClientConfig {
        mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        arch: if ipxe { 0 } else { 7 },
        vendor_class: if ipxe {
            "PXEClient:Arch:00000:UNDI:002001".into()
        } else {
            "PXEClient:Arch:00007:UNDI:003000".into()
        },
        ipxe,
        relay: Some(RELAY),
        server: SocketAddr::from((SERVER, 67)),
        request_4011: true,
        ..DhcpClientConfig::default()
    }
}

/// The firmware's DISCOVER, and (after the proxy offer) its 4011 REQUEST, as bytes on the wire.
fn dhcp_requests(ipxe: bool) -> (Vec<u8>, Vec<u8>) {
    let now = Instant::now();
    let mut client = DhcpClient::new(now, client_config(ipxe));
    let mut proxy = ProxyDhcp::new(ProxyDhcpConfig {
        http_port: 8050,
        ..Default::default()
    });
    let mut buf = [0u8; 1500];
    let t = client.poll_transmit(now, &mut buf).unwrap();
    let Payload::Bytes { len } = t.payload else {
        unreachable!()
    };
    let discover = buf[..len].to_vec();
    proxy.handle_datagram(
        now,
        DhcpPort::Dhcp,
        meta(SocketAddr::from((RELAY, 67))),
        &discover,
    );
    let (_, offer) = proxy.poll_transmit(now, &mut buf).unwrap();
    let Payload::Bytes { len } = offer.payload else {
        unreachable!()
    };
    client.handle_datagram(now, SocketAddr::from((SERVER, 67)), &buf[..len]);
    let t = client.poll_transmit(now, &mut buf).unwrap();
    let Payload::Bytes { len } = t.payload else {
        unreachable!()
    };
    (discover, buf[..len].to_vec())
}

fn dhcp(c: &mut Criterion) {
    let mut group = c.benchmark_group("dhcp");
    group.throughput(Throughput::Elements(1));
    for (name, ipxe) in [("edk2", false), ("ipxe", true)] {
        let (discover, request) = dhcp_requests(ipxe);
        let mut proxy = ProxyDhcp::new(ProxyDhcpConfig {
            http_port: 8050,
            ..Default::default()
        });
        let mut buf = [0u8; 1500];
        let from_relay = meta(SocketAddr::from((RELAY, 67)));
        let from_client = meta(SocketAddr::from((Ipv4Addr::new(10, 1, 0, 50), 4011)));
        group.bench_function(format!("{name} DISCOVER -> proxy offer (relayed)"), |b| {
            b.iter(|| {
                let now = Instant::now();
                proxy.handle_datagram(now, DhcpPort::Dhcp, from_relay, black_box(&discover));
                let out = proxy.poll_transmit(now, &mut buf);
                while proxy.poll_event().is_some() {}
                black_box(out)
            })
        });
        group.bench_function(format!("{name} 4011 REQUEST -> ACK"), |b| {
            b.iter(|| {
                let now = Instant::now();
                proxy.handle_datagram(now, DhcpPort::Pxe, from_client, black_box(&request));
                let out = proxy.poll_transmit(now, &mut buf);
                while proxy.poll_event().is_some() {}
                black_box(out)
            })
        });
    }
    group.finish();
}

/// A TFTP server with one file, and the RRQ a firmware sends for it.
struct TftpRig {
    server: TftpServer,
    catalog: MemoryCatalog,
    rrq: Vec<u8>,
    client: SocketAddr,
    buf: Vec<u8>,
}

impl TftpRig {
    fn new(file_len: usize, windowsize: u16) -> Self {
        let mut catalog = MemoryCatalog::new();
        catalog.insert("ipxe.efi", vec![0x5a; file_len]);
        let mut rrq = vec![0u8; 512];
        let options = [
            ("tsize", "0".to_owned()),
            ("blksize", "1468".to_owned()),
            ("windowsize", windowsize.to_string()),
        ];
        let request = TftpRepr::Rrq(TftpRequest {
            filename: "ipxe.efi",
            mode: "octet",
            options: options.iter().map(|(k, v)| (*k, v.as_str())).collect(),
        });
        let len = request.emit(&mut rrq).unwrap();
        rrq.truncate(len);
        Self {
            server: TftpServer::new(TftpServerConfig {
                max_transfers_per_client: usize::MAX,
                ..TftpServerConfig::default()
            }),
            catalog,
            rrq,
            client: SocketAddr::from((Ipv4Addr::new(10, 1, 0, 50), 2000)),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// RRQ in, OACK out. Returns the transfer's local end.
    fn start(&mut self, now: Instant) -> Local {
        self.server.handle_datagram(
            now,
            Local::Listener,
            meta(self.client),
            &self.rrq,
            &mut self.catalog,
        );
        let (local, _) = self.server.poll_transmit(now, 64, &mut self.buf).unwrap();
        while self.server.poll_event().is_some() {}
        local
    }

    /// ACK `block` in, every DATA run of the next window out. Returns datagrams polled.
    fn ack(&mut self, now: Instant, local: Local, block: u16) -> usize {
        let mut ack = [0u8; 4];
        TftpRepr::Ack { block, extra: None }.emit(&mut ack).unwrap();
        self.server
            .handle_datagram(now, local, meta(self.client), &ack, &mut self.catalog);
        let mut sent = 0;
        while let Some((_, t)) = self.server.poll_transmit(now, 64, &mut self.buf) {
            sent += t.payload.datagrams();
        }
        while self.server.poll_event().is_some() {}
        sent
    }
}

fn tftp(c: &mut Criterion) {
    let mut group = c.benchmark_group("tftp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("RRQ -> OACK (edk2 options), then client ERROR 8", |b| {
        let mut rig = TftpRig::new(1 << 20, 4);
        let mut abort = [0u8; 64];
        let n = TftpRepr::Error {
            code: ErrorCode::OptionRefused,
            message: "",
        }
        .emit(&mut abort)
        .unwrap();
        b.iter(|| {
            let now = Instant::now();
            let local = rig.start(now);
            // End the transfer the way EDK2's size probe does, so state does not pile up.
            rig.server
                .handle_datagram(now, local, meta(rig.client), &abort[..n], &mut rig.catalog);
            while rig.server.poll_event().is_some() {}
            black_box(local)
        })
    });
    for windowsize in [1u16, 4, 64] {
        // A 16 MiB file gives ~11,400 blocks: 128 windows of 64 stay short of the end, and no
        // block-number rollover.
        let blocks_per_iter = u64::from(windowsize);
        group.throughput(Throughput::Bytes(blocks_per_iter * 1468));
        group.bench_function(
            format!("ACK -> DATA window, windowsize {windowsize}"),
            |b| {
                b.iter_batched_ref(
                    || {
                        let mut rig = TftpRig::new(16 << 20, windowsize);
                        let now = Instant::now();
                        let local = rig.start(now);
                        (rig, local, 0u16)
                    },
                    |(rig, local, acked)| {
                        let sent = rig.ack(Instant::now(), *local, *acked);
                        *acked = acked.wrapping_add(windowsize);
                        black_box(sent)
                    },
                    BatchSize::NumIterations(128),
                )
            },
        );
    }
    group.finish();
}

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    let limits = HeadLimits::default();
    let ipxe_get = b"GET /sources/boot.wim HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1+\r\nHost: 10.0.0.1:8050\r\nRange: bytes=1048576-2097151\r\n\r\n";
    let curl_get = b"GET /boot.ipxe?mac=52:54:00:12:34:56&uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch=7 HTTP/1.1\r\nHost: 10.0.0.1:8050\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    group.bench_function("parse iPXE ranged GET", |b| {
        b.iter(|| {
            Request::parse(black_box(ipxe_get), &limits).map(|r| r.map(|(r, n)| (r.path.len(), n)))
        })
    });
    group.bench_function("parse script GET with query", |b| {
        b.iter(|| {
            Request::parse(black_box(curl_get), &limits)
                .map(|r| r.map(|(r, n)| (r.query.map(str::len), n)))
        })
    });
    let wim: u64 = 512 << 20;
    for (name, header) in [
        ("single", "bytes=1048576-2097151"),
        ("suffix", "bytes=-1048576"),
        ("open", "bytes=268435456-"),
        ("multi 4", "bytes=0-99,1000-1999,5000-5999,1048576-2097151"),
        ("unsatisfiable", "bytes=999999999999-"),
    ] {
        group.bench_function(format!("range evaluate {name}"), |b| {
            b.iter(|| range::evaluate(black_box(header), wim, 16))
        });
    }
    group.bench_function("parse + range evaluate", |b| {
        b.iter(|| {
            let (req, _) = Request::parse(black_box(ipxe_get), &limits)
                .unwrap()
                .unwrap();
            let r = req.header("range").map(|h| range::evaluate(h, wim, 16));
            black_box(r)
        })
    });
    group.finish();
}

criterion_group!(benches, paths, dhcp, tftp, http);
criterion_main!(benches);
