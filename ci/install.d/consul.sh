#!/usr/bin/env bash
# Consul for the pilot's Consul-adapter tests: Debian bullseye's consul 1.8.7 package,
# downloaded with apt from Debian's archive and unpacked (dpkg-deb -x) into .cache/consul,
# never installed system-wide. The tests look for .cache/consul/usr/bin/consul (or $SOFAMESH_CONSUL).
# Idempotent: does nothing when the binary is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.cache/consul
bin=$dest/usr/bin/consul
version=${CONSUL_DEB_VERSION:-1.8.7+dfsg1-2+b3}

# The version is read whole before it is matched: `consul version | grep -q` (or `| head`)
# may close the pipe early, and under pipefail consul's SIGPIPE (exit 141) failed the install.
if [ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null || true)" == *"Consul v1.8.7"* ]]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A private apt state so the machine's own sources and lists are left untouched.
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc/preferences.d" "$work/etc/sources.list.d"
cat >"$work/etc/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
SRC
apt_opts=(
  -o "Dir::Etc::SourceList=$work/etc/sources.list"
  -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
  -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "APT::Sandbox::User=root"
  -q
)
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download "consul=$version" >/dev/null)
deb=$(ls "$work"/consul_*.deb)
rm -rf "$dest"
mkdir -p "$dest"
dpkg-deb -x "$deb" "$dest"
out=$("$bin" version)
printf '%s\n' "${out%%$'\n'*}" >&2
