#!/usr/bin/env bash
# Builds zpxe's MSI on Linux with wixl (Debian package wixl, from msitools):
#   dist/windows/build-msi.sh [ZPXE_EXE] [OUT_MSI]
# ZPXE_EXE defaults to the release build for x86_64-pc-windows-gnu, OUT_MSI to target/zpxe.msi.
# The configuration it installs is dist/zpxe.toml with the image root moved to
# C:\ProgramData\zpxe\root (which the MSI creates).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
exe="${1:-$top/target/x86_64-pc-windows-gnu/release/zpxe.exe}"
out="${2:-$top/target/zpxe.msi}"
command -v wixl >/dev/null || { echo "build-msi: wixl is missing (Debian package wixl)" >&2; exit 1; }
[ -f "$exe" ] || { echo "build-msi: $exe is missing (cargo build --target x86_64-pc-windows-gnu)" >&2; exit 1; }

# The package version (MSI wants up to three numbers).
version="$(sed -n 's/^version = "\([0-9]*\.[0-9]*\.[0-9]*\).*"/\1/p' "$top/Cargo.toml" | head -n 1)"
[ -n "$version" ] || { echo "build-msi: no version in $top/Cargo.toml" >&2; exit 1; }

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/zpxe.exe"
# The example's Linux root becomes the folder the MSI creates; the rest stays as shipped.
grep -q '^root = ' "$top/dist/zpxe.toml" || { echo "build-msi: no root line in dist/zpxe.toml" >&2; exit 1; }
sed "s|^root = .*|root = 'C:\\\\ProgramData\\\\zpxe\\\\root'   # everything served over TFTP and HTTP lives below this folder|" \
  "$top/dist/zpxe.toml" >"$stage/zpxe.toml"
grep -q "^root = 'C:\\\\ProgramData\\\\zpxe\\\\root'" "$stage/zpxe.toml" ||
  { echo "build-msi: could not set the Windows root" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
# wixl takes each File's Source relative to the directory it runs in.
(cd "$stage" && wixl -a x64 -D Version="$version" -o "$out.tmp" "$here/zpxe.wxs")
mv "$out.tmp" "$out"
echo "$out"
