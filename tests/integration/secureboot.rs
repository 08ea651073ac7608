//! A Secure Boot chain served by zpxe, under qemu with Secure Boot enforced: Debian's OVMF
//! secboot build with Microsoft's keys enrolled (`OVMF_CODE_4M.secboot.fd`,
//! `OVMF_VARS_4M.ms.fd`, package `ovmf`). Over TFTP, EDK2's own PXE loads Debian's shim
//! (`shimx64.efi.signed` from `shim-signed`, signed by Microsoft's UEFI CA); shim loads Debian's
//! network GRUB (`grubnetx64.efi.signed` from `grub-efi-amd64-signed`, signed by Debian's key,
//! which shim carries) from the same directory as `grubx64.efi`; GRUB fetches `grub/grub.cfg`,
//! then Debian's signed kernel (verified through shim) and an initrd whose `/init`
//! (tests/fixtures/firmware/init.c) prints a marker on the serial console and powers off.
//! Over UEFI HTTP Boot the same shim and GRUB run as far as GRUB's banner: Debian's signed GRUB
//! has no HTTP client, so it cannot fetch anything more that way.
//!
//! zpxe runs as the only DHCP server (`dhcp.mode = "server"`): GRUB takes its TFTP server from
//! the siaddr of the server that gave the address, which a proxyDHCP cannot set (see the
//! README's Secure Boot section). The negative control boots Debian's unsigned `ipxe.efi` under
//! the same firmware: the firmware downloads it and refuses it ("Access Denied"), and iPXE never
//! asks for anything. zpxe logs JSON here (tests/fixtures/firmware/secureboot.toml) and the
//! tests read its fields, not the wording of its lines.
//!
//! The kernel is the vmlinuz of the package Debian's `linux-image-amd64` depends on, which
//! tests/fixtures/firmware/fetch-debian-kernel.sh puts in a cache directory (tests/run-all.sh
//! runs it and exports [`KERNEL_ENV`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{require, run};
use crate::firmware::{
    Firmware, Lab, Net, acked_boot_files, events, http_requests, in_order, printable, read_lossy,
    require_file, tftp_completed, tftp_requested,
};

/// Printed by the initrd's /init, started by Debian's signed kernel.
const INITRD_MARKER: &str = "ZPXE-INITRD-OK";
/// Printed by GRUB from the grub.cfg zpxe serves.
const GRUB_MARKER: &str = "ZPXE-GRUB-CFG-OK";
/// The whole chain to the initrd takes about 30 s under TCG on 2 idle cores (74 s seen with
/// other builds running); a stuck boot fails here.
const LIMIT: Duration = Duration::from_secs(120);
const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
const GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
/// Names the signed kernel to serve; [`KERNEL_CACHED`] when unset.
const KERNEL_ENV: &str = "ZPXE_DEBIAN_KERNEL";
/// Where tests/fixtures/firmware/fetch-debian-kernel.sh caches it by default.
const KERNEL_CACHED: &str = "/var/cache/zpxe-tests/debian-kernel/vmlinuz";

/// GRUB's configuration when it only shows where it took its files from.
const GRUB_CFG_MARKER_ONLY: &str = "echo \"ZPXE-GRUB-CFG-OK root=$root\"\n";
/// GRUB's configuration that boots the signed kernel with the test's initrd (only the kernel's
/// warnings on the serial console: each line costs time under TCG).
const GRUB_CFG_KERNEL: &str = "echo \"ZPXE-GRUB-CFG-OK root=$root\"\n\
    linux /vmlinuz console=ttyS0 panic=-1 loglevel=5\n\
    initrd /initrd.img\n\
    boot\n";

/// The signed kernel, or a failure saying how to get it.
fn debian_kernel() -> PathBuf {
    let p = std::env::var_os(KERNEL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL_CACHED));
    assert!(
        p.is_file(),
        "the Secure Boot chain needs Debian's signed kernel at {} ({KERNEL_ENV}, default \
         {KERNEL_CACHED}): run tests/fixtures/firmware/fetch-debian-kernel.sh as root \
         (tests/run-all.sh does)",
        p.display()
    );
    p
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// One entry of a newc ("070701") cpio archive, the initramfs format the kernel unpacks.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let name_len = u32::try_from(name.len() + 1).expect("short name");
    let data_len = u32::try_from(data.len()).expect("small file");
    out.extend_from_slice(b"070701");
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    // namesize, check.
    for v in [
        ino, mode, 0, 0, 1, 0, data_len, 0, 0, rdev.0, rdev.1, name_len, 0,
    ] {
        out.extend_from_slice(format!("{v:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The initrd: /dev/console and the static /init built from tests/fixtures/firmware/init.c.
fn build_initrd(dir: &Path) -> Vec<u8> {
    let init = dir.join("init");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firmware/init.c");
    let (ok, out) = run(
        Command::new(require("cc"))
            .args(["-static", "-nostdlib", "-Os", "-fno-pie", "-no-pie", "-o"])
            .arg(&init)
            .arg(&source),
        Duration::from_secs(60),
    );
    assert!(ok, "cc {}: {out}", source.display());
    let init = std::fs::read(&init).expect("read init");
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, 1, "dev", 0o040_755, (0, 0), &[]);
    cpio_entry(&mut cpio, 2, "dev/console", 0o020_600, (5, 1), &[]);
    cpio_entry(&mut cpio, 3, "init", 0o100_755, (0, 0), &init);
    cpio_entry(&mut cpio, 4, "TRAILER!!!", 0, (0, 0), &[]);
    cpio
}

/// Sizes of what [`stage_chain`] put below zpxe's root.
struct Chain {
    shim: u64,
    grub: u64,
    /// (vmlinuz, initrd.img) when the kernel is staged.
    kernel: Option<(u64, u64)>,
}

/// Puts the chain below zpxe's root: efi/shimx64.efi, efi/grubx64.efi, grub/grub.cfg, and with
/// `kernel` vmlinuz and initrd.img (GRUB's root is the TFTP server's root).
fn stage_chain(lab: &Lab, kernel: bool) -> Chain {
    let shim = require_file(SHIM, "shim-signed");
    let grub = require_file(GRUB, "grub-efi-amd64-signed");
    lab.serve_file(&shim, "efi/shimx64.efi");
    lab.serve_file(&grub, "efi/grubx64.efi");
    let kernel = kernel.then(|| {
        let vmlinuz = debian_kernel();
        lab.serve_file(&vmlinuz, "vmlinuz");
        let initrd = build_initrd(lab.dir.path());
        std::fs::write(lab.dir.path().join("initrd.img"), &initrd).expect("write initrd");
        lab.serve_file(&lab.dir.path().join("initrd.img"), "initrd.img");
        (size(&vmlinuz), initrd.len() as u64)
    });
    let cfg = if kernel.is_some() {
        GRUB_CFG_KERNEL
    } else {
        GRUB_CFG_MARKER_ONLY
    };
    lab.serve_text("grub/grub.cfg", cfg);
    Chain {
        shim: size(&shim),
        grub: size(&grub),
        kernel,
    }
}

/// Secure Boot on, over TFTP: OVMF's PXE leases an address from zpxe and gets shim; shim,
/// verified against Microsoft's UEFI CA, asks for grubx64.efi beside it; GRUB, verified by
/// shim against Debian's key, fetches grub/grub.cfg from the siaddr of zpxe's ACK, then the
/// signed kernel and the initrd, and the kernel (its EFI stub saying Secure Boot is on) runs
/// /init.
#[test]
fn secure_boot_shim_grub_and_signed_kernel_over_tftp_from_zpxe_in_server_mode() {
    let mut lab = Lab::new("sbtftp", Net::Server);
    let chain = stage_chain(&lab, true);
    let (vmlinuz, initrd) = chain.kernel.expect("kernel staged");
    let mut server = lab.start_zpxe_from("secureboot.toml", "");
    let mac = "52:54:00:90:00:60";
    let uuid = "a1b2c3d4-0060-4000-8000-000000000060";
    let took = lab
        .boot_until(
            &mut server,
            Firmware::OvmfSecureBootPxe,
            mac,
            uuid,
            LIMIT,
            None,
            INITRD_MARKER,
        )
        .unwrap_or_else(|why| panic!("{why}{}", lab.report(&mut server)));
    eprintln!(
        "secure boot over TFTP: the initrd's marker after {:.1}s",
        took.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(300));
    let events = events(&mut server);

    // The firmware's lease came from zpxe with shim as its boot file.
    let acked = acked_boot_files(&events, mac);
    assert!(
        acked.first().map(String::as_str) == Some("efi/shimx64.efi"),
        "zpxe's ACK did not name shim: {acked:?}{}",
        lab.report(&mut server)
    );
    // shim, GRUB from shim's directory, GRUB's grub.cfg (GRUB names its files with a leading
    // slash, below its prefix /grub), the kernel and the initrd: each whole, in this order.
    let done = tftp_completed(&events);
    let wanted = [
        ("efi/shimx64.efi".to_owned(), chain.shim),
        ("efi/grubx64.efi".to_owned(), chain.grub),
        ("/grub/grub.cfg".to_owned(), GRUB_CFG_KERNEL.len() as u64),
        ("/vmlinuz".to_owned(), vmlinuz),
        ("/initrd.img".to_owned(), initrd),
    ];
    if let Err(e) = in_order(&done, &wanted) {
        panic!(
            "TFTP transfers: {e}; requests {:?}{}",
            tftp_requested(&events),
            lab.report(&mut server)
        );
    }
    assert!(
        http_requests(&events).is_empty(),
        "the TFTP chain used HTTP{}",
        lab.report(&mut server)
    );
    // The serial console: GRUB ran the cfg with zpxe as its TFTP server (from the ACK's
    // siaddr), and the kernel's EFI stub found Secure Boot on.
    let serial = printable(&read_lossy(&lab.serial_path()));
    for line in [
        &format!("{GRUB_MARKER} root=tftp,10.90.0.1") as &str,
        "EFI stub: UEFI Secure Boot is enabled",
    ] {
        assert!(
            serial.contains(line),
            "{line:?} not on the serial console{}",
            lab.report(&mut server)
        );
    }
}

/// Secure Boot on, over UEFI HTTP Boot: zpxe's OFFER and ACK carry `HTTPClient` and shim's
/// URL; the firmware verifies shim, shim fetches grubx64.efi from the same directory over HTTP
/// (it asks for `/efi//grubx64.efi`), and GRUB starts and shows its banner. Debian's signed
/// GRUB has no HTTP client, so the chain ends there.
#[test]
fn secure_boot_http_boot_runs_shim_and_signed_grub_from_zpxe_in_server_mode() {
    let mut lab = Lab::new("sbhttp", Net::Server);
    let chain = stage_chain(&lab, false);
    let mut server = lab.start_zpxe_from("secureboot.toml", "");
    let mac = "52:54:00:90:00:62";
    let uuid = "a1b2c3d4-0062-4000-8000-000000000062";
    let took = lab
        .boot_until(
            &mut server,
            Firmware::OvmfSecureBootHttpBoot,
            mac,
            uuid,
            LIMIT,
            None,
            "GNU GRUB  version",
        )
        .unwrap_or_else(|why| panic!("{why}{}", lab.report(&mut server)));
    eprintln!(
        "secure boot over HTTP Boot: GRUB's banner after {:.1}s",
        took.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(300));
    let events = events(&mut server);
    let url = "http://10.90.0.1:8050/efi/shimx64.efi";
    let acked = acked_boot_files(&events, mac);
    assert!(
        acked.first().map(String::as_str) == Some(url),
        "zpxe's ACK did not carry shim's URL: {acked:?}{}",
        lab.report(&mut server)
    );
    // The doubled slash shim writes is the same file.
    let gets: Vec<_> = http_requests(&events)
        .into_iter()
        .filter(|(method, ..)| method == "GET")
        .map(|(_, path, status, bytes)| (path.replace("//", "/"), status, bytes))
        .collect();
    if let Err(e) = in_order(
        &gets,
        &[
            ("/efi/shimx64.efi".to_owned(), 200, chain.shim),
            ("/efi/grubx64.efi".to_owned(), 200, chain.grub),
        ],
    ) {
        panic!("HTTP requests: {e}{}", lab.report(&mut server));
    }
    let tftp = tftp_completed(&events);
    assert!(
        tftp.is_empty(),
        "HTTP Boot used TFTP: {tftp:?}{}",
        lab.report(&mut server)
    );
    let serial = printable(&read_lossy(&lab.serial_path()));
    assert!(
        serial.contains("Start HTTP Boot over IPv4") && !serial.contains("Start PXE"),
        "the firmware did not boot over UEFI HTTP Boot alone{}",
        lab.report(&mut server)
    );
}

/// The negative control: the same Secure Boot firmware is handed Debian's unsigned ipxe.efi.
/// It downloads it and refuses to run it ("Access Denied"); iPXE never DHCPs or asks for its
/// script. (The same file boots under OVMF without Secure Boot: firmware.rs.)
#[test]
fn secure_boot_refuses_unsigned_ipxe_efi_from_zpxe() {
    let mut lab = Lab::new("sbneg", Net::Server);
    stage_chain(&lab, false);
    let mac = "52:54:00:90:00:61";
    let uuid = "a1b2c3d4-0061-4000-8000-000000000061";
    // This client gets the unsigned loader instead of shim.
    let mut server = lab.start_zpxe_from(
        "secureboot.toml",
        &format!("\n[[boot.rule]]\nmac = \"{mac}\"\nloader = \"ipxe.efi\"\n"),
    );
    let ipxe = require_file("/usr/lib/ipxe/ipxe.efi", "ipxe");
    let ipxe_size = size(&ipxe);
    let start = Instant::now();
    // The firmware's refusal is the end of this boot: EDK2 prints "Access Denied" for an image
    // that fails verification.
    if let Err(why) = lab.boot_until(
        &mut server,
        Firmware::OvmfSecureBootPxe,
        mac,
        uuid,
        LIMIT,
        None,
        "Access Denied",
    ) {
        panic!(
            "the firmware did not refuse the unsigned loader: {why}{}",
            lab.report(&mut server)
        );
    }
    eprintln!(
        "secure boot refused ipxe.efi after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(300));
    let serial = printable(&read_lossy(&lab.serial_path()));
    assert!(
        serial.contains("NBP file downloaded successfully") && serial.contains("failed to load"),
        "the refusal should follow a whole download{}",
        lab.report(&mut server)
    );
    let events = events(&mut server);
    let done = tftp_completed(&events);
    assert!(
        done == [("ipxe.efi".to_owned(), ipxe_size)],
        "the firmware should download ipxe.efi once, whole, and nothing else: {done:?}{}",
        lab.report(&mut server)
    );
    // Had iPXE run, it would have DHCPed as iPXE (and been handed its script URL).
    let acked = acked_boot_files(&events, mac);
    let http = http_requests(&events);
    assert!(
        !acked.is_empty() && acked.iter().all(|f| f == "ipxe.efi") && http.is_empty(),
        "a second stage asked zpxe after the refusal: ACKs {acked:?}, HTTP {http:?}{}",
        lab.report(&mut server)
    );
}
