#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests need when it
# is missing, then runs formatting, lints, every test, and the Windows check.
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
  gcc-mingw-w64-x86-64  # links Windows test builds
  qemu-system-x86 # real firmware under qemu (tests/integration/firmware.rs)
  ipxe-qemu       # iPXE option ROMs pxe-virtio.rom, efi-virtio.rom (firmware.rs)
  qemu-system-arm # qemu-system-aarch64 for the ARM64 scenario (firmware.rs)
  qemu-efi-aarch64  # AAVMF_CODE.fd / AAVMF_VARS.fd, EDK2 for ARM64 (firmware.rs)
  ovmf            # OVMF_CODE_4M.fd / OVMF_VARS_4M.fd, EDK2's UEFI PXE (firmware.rs)
  ipxe            # undionly.kpxe, ipxe.efi, snponly.efi served by zpxe (firmware.rs)
  dnsmasq-base    # plain DHCP server and router advertisements beside zpxe (firmware.rs)
  tcpdump         # packet summaries when a firmware boot fails (firmware.rs)
  python3         # the minimal DHCP relay tests/fixtures/firmware/dhcp-relay.py
  openssl         # a throwaway certificate for the HTTPS test (http.rs)
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
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup target list --installed | grep -q '^x86_64-pc-windows-gnu$' || rustup target add x86_64-pc-windows-gnu

set -x
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --release --bins
ZPXE_BIN="$PWD/target/release/zpxe" ZPXE_LOADGEN_BIN="$PWD/target/release/zpxe-loadgen" \
  cargo test --workspace --release
cargo check --workspace --target x86_64-pc-windows-gnu
