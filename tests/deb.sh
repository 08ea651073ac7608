#!/usr/bin/env bash
# The Debian package, end to end, as root on a throwaway machine (tests/run-all.sh calls it after
# the release build): builds the .deb from Cargo.toml's [package.metadata.deb] with cargo-deb,
# checks its contents, installs it with dpkg, runs `zpxe check` on the installed configuration
# and `systemd-analyze verify` on the installed unit, removes and purges it, and checks that
# nothing it made is left. It never leaves zpxe installed: on any failure the EXIT trap purges.
#
# Needs target/release/zpxe (`cargo build --release -p zpxe --bin zpxe`). Paths the package
# owns or makes that exist beforehand (a zpxe run by hand makes /var/lib/zpxe) are moved aside
# for the test and put back at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "deb.sh: FAIL: $*" >&2
  exit 1
}
step() { echo "deb.sh: $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and purges the package with dpkg"
[ -x target/release/zpxe ] || fail "no target/release/zpxe: cargo build --release -p zpxe --bin zpxe"
for tool in dpkg dpkg-deb dpkg-query systemd-analyze systemctl deb-systemd-helper; do
  command -v "$tool" >/dev/null || fail "$tool is missing (tests/run-all.sh installs its package)"
done
if dpkg-query -W -f='${Status}' zpxe 2>/dev/null | grep -q .; then
  fail "a zpxe package is already known to dpkg ($(dpkg-query -W -f='${Status}' zpxe)); this test installs and purges its own"
fi

# cargo-deb, pinned; built once per machine (about 150 s of CPU on 2 cores) when missing.
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $cargo_deb_version" ]; then
  step "installing cargo-deb $cargo_deb_version"
  cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

# Everything the package creates, owns or leaves state in.
unit=/usr/lib/systemd/system/zpxe.service
wants=/etc/systemd/system/multi-user.target.wants/zpxe.service
dsh=/var/lib/systemd/deb-systemd-helper-enabled
dsh_masked=/var/lib/systemd/deb-systemd-helper-masked
# (dpkg -r masks the unit with a link to /dev/null in /etc/systemd/system until the purge.)
owned=(/usr/bin/zpxe /etc/zpxe /usr/share/doc/zpxe "$unit" /srv/zpxe /var/lib/zpxe
  /var/lib/private/zpxe "$wants" /etc/systemd/system/zpxe.service "$dsh/zpxe.service.dsh-also"
  "$dsh/multi-user.target.wants/zpxe.service" "$dsh_masked/zpxe.service")

backup=$(mktemp -d /var/tmp/zpxe-deb-test.XXXXXX)
moved=()
made_private=0
cleanup() {
  local rc=$?
  set +e
  if dpkg-query -W -f='${Status}' zpxe 2>/dev/null | grep -q .; then
    echo "deb.sh: purging zpxe after a failure" >&2
    dpkg --purge zpxe >&2
  fi
  rm -rf /var/lib/private/zpxe /var/lib/zpxe /srv/zpxe/deb-test-image
  rmdir /srv/zpxe 2>/dev/null
  [ "$made_private" -eq 1 ] && rmdir /var/lib/private 2>/dev/null
  for p in "${moved[@]}"; do
    mkdir -p "$(dirname "$p")"
    mv "$backup/root$p" "$p" || echo "deb.sh: could not restore $p from $backup" >&2
  done
  rm -rf "$backup/root"
  rmdir "$backup"
  exit "$rc"
}
trap cleanup EXIT
for p in "${owned[@]}"; do
  if [ -e "$p" ] || [ -L "$p" ]; then
    step "moving the existing $p aside to $backup (restored at the end)"
    mkdir -p "$backup/root$(dirname "$p")"
    mv "$p" "$backup/root$p"
    moved+=("$p")
  fi
done

# Build. --fast: lighter xz, about 4 s instead of a minute for the same files.
step "building the package"
deb=$(cargo deb --no-build -p zpxe --fast | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no package path (got: $deb)"
step "built $deb ($(stat -c %s "$deb") bytes)"

# Contents: exactly these files, with these modes, and the shipped files byte for byte.
listing=$(dpkg-deb -c "$deb")
files=$(awk '$1 !~ /^d/ {print $1, $6}' <<<"$listing" | sort)
expected=$(sort <<'EOF'
-rw-r--r-- ./etc/zpxe/zpxe.toml
-rw-r--r-- ./usr/lib/systemd/system/zpxe.service
-rw-r--r-- ./usr/share/doc/zpxe/README.md
-rw-r--r-- ./usr/share/doc/zpxe/copyright
-rwxr-xr-x ./usr/bin/zpxe
EOF
)
[ "$files" = "$expected" ] || fail "package files differ from the expected list:
$(diff <(echo "$expected") <(echo "$files") || true)"
! grep -q '\./srv' <<<"$listing" || fail "the package ships something under /srv (postinst makes /srv/zpxe)"
extract() { dpkg-deb --fsys-tarfile "$deb" | tar -xOf - "$1"; }
cmp <(extract ./etc/zpxe/zpxe.toml) dist/zpxe.toml || fail "packaged zpxe.toml differs from dist/zpxe.toml"
cmp <(extract ./usr/lib/systemd/system/zpxe.service) dist/systemd/zpxe.service ||
  fail "packaged unit differs from dist/systemd/zpxe.service"
cmp <(extract ./usr/bin/zpxe) target/release/zpxe || fail "packaged binary differs from target/release/zpxe"

info=$(dpkg-deb -I "$deb")
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = zpxe ] || fail "Package: $(field Package)"
[ "$(field Architecture)" = "$(dpkg --print-architecture)" ] || fail "Architecture: $(field Architecture)"
[ "$(field Version)" = "$(target/release/zpxe -V | awk '{print $2}')-1" ] ||
  fail "Version $(field Version) is not the binary's $(target/release/zpxe -V)"
grep -q '^libc6 ' <<<"$(field Depends | tr ',' '\n' | sed 's/^ *//')" ||
  fail "Depends lacks libc6: $(field Depends)"
for script in conffiles postinst prerm postrm; do
  grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$script( |$)" <<<"$info" || fail "control member $script missing:
$info"
done
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/zpxe/zpxe.toml ] ||
  fail "conffiles is not exactly /etc/zpxe/zpxe.toml"

# Install.
step "dpkg -i"
dpkg -i "$deb"
[ "$(dpkg-query -W -f='${Status}' zpxe)" = "install ok installed" ] || fail "not installed"
[ "$(/usr/bin/zpxe -V)" = "$(target/release/zpxe -V)" ] || fail "/usr/bin/zpxe -V: $(/usr/bin/zpxe -V)"
/usr/bin/zpxe loadgen --help >/dev/null || fail "zpxe loadgen --help"
[ "$(stat -c '%F %a %U' /srv/zpxe)" = "directory 755 root" ] || fail "/srv/zpxe: $(stat -c '%F %a %U' /srv/zpxe)"
dpkg-query -W -f='${Conffiles}\n' zpxe | grep -q '^ /etc/zpxe/zpxe.toml [0-9a-f]\{32\}$' ||
  fail "dpkg does not list /etc/zpxe/zpxe.toml as a conffile"
# Not enabled (and systemd is not PID 1 here, so nothing could have started it).
[ ! -e "$wants" ] && [ ! -L "$wants" ] || fail "installing enabled the unit"
[ "$(systemctl is-enabled zpxe.service || true)" = disabled ] ||
  fail "systemctl is-enabled: $(systemctl is-enabled zpxe.service 2>&1 || true)"

step "zpxe check on the installed configuration"
out=$(/usr/bin/zpxe check --config /etc/zpxe/zpxe.toml 2>&1) || fail "zpxe check failed:
$out"
echo "$out"
# The same check on a copy with an unknown key must fail, or it proves nothing.
{ cat /etc/zpxe/zpxe.toml; printf '[deb-test]\nnot-a-key = 1\n'; } >"$backup/zpxe.toml"
! /usr/bin/zpxe check --config "$backup/zpxe.toml" >/dev/null 2>&1 ||
  fail "zpxe check accepted an unknown section"
rm "$backup/zpxe.toml"

# verify loads the unit as the system manager would (the binaries it runs must exist) and exits
# non-zero on an error; it only warns about a bad value, so any line naming the unit fails too.
verify_unit() {
  local out
  out=$(systemd-analyze verify "$1" 2>&1) || { echo "$out"; return 1; }
  if grep -q zpxe <<<"$out"; then echo "$out"; return 1; fi
  [ -z "$out" ] || echo "deb.sh: systemd-analyze verify printed (not about zpxe): $out"
}
step "systemd-analyze verify $unit"
out=$(verify_unit "$unit") || fail "systemd-analyze verify $unit:
$out"
# shellcheck disable=SC2016 # $MAINPID is systemd's, not the shell's
grep -Fxq 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "the installed unit has no ExecReload"
# The same check on a copy with one bad value must fail, or it proves nothing.
sed 's/^Type=notify$/Type=notifyy/' "$unit" >"$backup/zpxe.service"
grep -q '^Type=notifyy$' "$backup/zpxe.service" || fail "the unit has no Type=notify line to break"
! verify_unit "$backup/zpxe.service" >/dev/null || fail "systemd-analyze verify accepted Type=notifyy"
rm "$backup/zpxe.service"

# What a running system adds: an administrator enables the unit, and systemd, on its first
# start, makes StateDirectory=zpxe with DynamicUser=yes as /var/lib/private/zpxe plus the link
# /var/lib/zpxe to it (systemd.exec(5)), where zpxe keeps its database. systemd is not PID 1
# here, so this test lays that directory out as systemd would.
systemctl enable zpxe.service
[ -L "$wants" ] || fail "systemctl enable made no $wants"
[ -d /var/lib/private ] || { install -d -m 0700 /var/lib/private; made_private=1; }
install -d -m 0755 /var/lib/private/zpxe
ln -s private/zpxe /var/lib/zpxe
echo "test" >/var/lib/zpxe/zpxe.db

# Remove keeps the configuration and the state; purge removes them.
step "dpkg -r"
dpkg -r zpxe
[ "$(dpkg-query -W -f='${Status}' zpxe)" = "deinstall ok config-files" ] || fail "after remove: $(dpkg-query -W -f='${Status}' zpxe)"
[ ! -e /usr/bin/zpxe ] && [ ! -e "$unit" ] || fail "remove left the binary or the unit"
[ -f /etc/zpxe/zpxe.toml ] && [ -f /var/lib/zpxe/zpxe.db ] || fail "remove deleted the configuration or the state"
[ "$(readlink /etc/systemd/system/zpxe.service)" = /dev/null ] || fail "dpkg -r did not mask the unit"

step "dpkg --purge"
dpkg --purge zpxe
! dpkg-query -W -f='${Status}' zpxe 2>/dev/null | grep -q . || fail "dpkg still knows zpxe: $(dpkg-query -W -f='${Status}' zpxe)"
left=()
for p in "${owned[@]}"; do
  if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done
for p in /var/lib/dpkg/info/zpxe.* "$dsh"/*/zpxe.service "$dsh"/zpxe.*; do
  if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done
[ ${#left[@]} -eq 0 ] || fail "purge left: ${left[*]}"

# A purge never deletes boot images: /srv/zpxe goes only when it is empty.
step "purge keeps an administrator's files under /srv/zpxe"
dpkg -i "$deb" >/dev/null
echo image >/srv/zpxe/deb-test-image
dpkg --purge zpxe
[ "$(cat /srv/zpxe/deb-test-image)" = image ] || fail "purge deleted /srv/zpxe/deb-test-image"
rm /srv/zpxe/deb-test-image
rmdir /srv/zpxe

step "ok: built, installed, checked, verified and purged $(basename "$deb")"
