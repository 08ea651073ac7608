#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests need when it
# is missing, then runs formatting, lints, every test, and the Windows build's tests under Wine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients and peers the integration tests drive. A test that needs one of these fails when
# it is missing; it never skips.
packages=(
  curl            # HTTP and TFTP client (tests/http.rs, tests/tftp.rs)
  atftp           # TFTP client with windowsize (tests/tftp.rs)
  busybox         # busybox tftp and udhcpc (tests/tftp.rs, tests/dhcp_netns.rs)
  iproute2        # network namespaces, veth, tc (tests/integration/netns.rs)
  nftables        # loss, duplication and reordering between namespaces (no netem in this kernel)
  chromium        # renders the loadgen HTML report (loadgen tests)
  gcc-mingw-w64-x86-64  # links Windows builds; builds the Wine shim (tests/fixtures/windows)
  wine64          # runs the Windows build's tests and zpxe.exe (tests/integration/windows.rs)
  wixl            # builds zpxe's MSI on Linux (dist/windows/build-msi.sh, windows_service.rs)
  msitools        # msiinfo: reads the MSI's tables (tests/integration/windows_service.rs)
  qemu-system-x86 # real firmware under qemu (tests/integration/firmware.rs)
  ipxe-qemu       # iPXE option ROMs pxe-virtio.rom, efi-virtio.rom (firmware.rs)
  qemu-system-arm # qemu-system-aarch64 for the ARM64 scenario (firmware.rs)
  qemu-efi-aarch64  # AAVMF_CODE.fd / AAVMF_VARS.fd, EDK2 for ARM64 (firmware.rs)
  ovmf            # OVMF_CODE_4M.fd / OVMF_VARS_4M.fd, EDK2's UEFI PXE (firmware.rs); the Secure
                  # Boot build OVMF_CODE_4M.secboot.fd + OVMF_VARS_4M.ms.fd (secureboot.rs)
  shim-signed     # shimx64.efi.signed, Microsoft-signed shim, first stage under Secure Boot (secureboot.rs)
  grub-efi-amd64-signed  # grubnetx64.efi.signed, Debian-signed network GRUB, shim's second stage (secureboot.rs)
  gcc             # builds the Secure Boot initrd's static /init, tests/fixtures/firmware/init.c (secureboot.rs)
  ipxe            # undionly.kpxe, ipxe.efi, snponly.efi served by zpxe (firmware.rs)
  dnsmasq-base    # plain DHCP server and router advertisements beside zpxe (firmware.rs)
  tcpdump         # packet summaries when a firmware boot fails (firmware.rs)
  strace          # shows the web thread never reads the database for machine reads (web_api.rs)
  python3-prometheus-client  # Prometheus's own parser reads /metrics (reporting.rs)
  python3         # the minimal DHCP relay tests/fixtures/firmware/dhcp-relay.py; forged DHCP
                  # messages from a namespace (dhcp_server_defences.rs)
  openssl         # a throwaway certificate for the HTTPS test (http.rs)
  postgresql      # the shared inventory backend, run by tests/integration/db.rs as user postgres
  systemd         # systemd-analyze verify and systemctl on the installed unit (tests/deb.sh)
  dpkg-dev        # dpkg-shlibdeps: the .deb's Depends (cargo-deb, tests/deb.sh)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "run-all: missing packages ${missing[*]}; run as root or install them first" >&2
    exit 1
  fi
  echo "run-all: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The ARM64 scenario's iPXE: Debian 12 has none, the script takes Debian 13's build into a cache
# (instant when cached). A plain path on stdout, for the test.
ZPXE_IPXE_ARM64="$(tests/fixtures/firmware/fetch-ipxe-arm64.sh)"
export ZPXE_IPXE_ARM64
# The Secure Boot chain's signed kernel: the vmlinuz of the package linux-image-amd64 depends on,
# downloaded (not installed) into a cache (instant when cached). A plain path on stdout.
ZPXE_DEBIAN_KERNEL="$(tests/fixtures/firmware/fetch-debian-kernel.sh)"
export ZPXE_DEBIAN_KERNEL
# Two Wine prefixes (a client and a server edition of Windows) for the Windows build.
ZPXE_WINE_CACHE="$(tests/fixtures/windows/setup-wine.sh)"
export ZPXE_WINE_CACHE
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup target list --installed | grep -q '^x86_64-pc-windows-gnu$' || rustup target add x86_64-pc-windows-gnu

windows=x86_64-pc-windows-gnu
# The crates that run on Windows (the bench crate drives Linux peers and namespaces), and the
# test kit zpxe's integration tests build with there.
windows_crates=(-p zpxe-engine -p zpxe-platform -p zpxe-loadgen -p zpxe -p zpxe-testkit)

set -x
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy "${windows_crates[@]}" --all-targets --target "$windows" -- -D warnings
cargo check --workspace --target "$windows"
cargo build --workspace --release --bins
# The Debian package from the binary just built: cargo-deb (pinned, installed when missing), its
# contents, dpkg -i, `zpxe check` and `systemd-analyze verify` on what it installed, then
# dpkg -r and --purge, leaving nothing behind (tests/deb.sh).
tests/deb.sh
cargo build --target "$windows" -p zpxe --bin zpxe
ZPXE_BIN="$PWD/target/release/zpxe" ZPXE_LOADGEN_BIN="$PWD/target/release/zpxe-loadgen" \
  ZPXE_WIN_BIN="$PWD/target/$windows/debug/zpxe.exe" \
  cargo test --workspace --release
# The Windows build's own unit tests (IOCP, TransmitFile, the image store's Windows rules),
# run by Wine as a client edition.
WINEPREFIX="$ZPXE_WINE_CACHE/client" WINEDEBUG=-all \
  CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=/usr/lib/wine/wine64 \
  cargo test "${windows_crates[@]}" --lib --target "$windows"
# Every fuzz target (fuzz/) briefly from its committed corpus: ZPXE_FUZZ_SECONDS each (30).
tests/fuzz.sh
