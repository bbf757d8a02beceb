#!/usr/bin/env bash
# Installs sup on this machine: the binaries, the example configs (kept when
# already present) and the systemd units. Run as root from the repository:
#
#   deploy/install.sh supd          # the supervisor host
#   deploy/install.sh agent         # every GPU node
#   deploy/install.sh both          # a single-machine trial
#
# BIN_DIR (default /usr/local/bin) and TARGET (default target/release) change
# where binaries go and come from; DESTDIR stages everything under another root
# (no user is created and systemd is not told then). Nothing is started until you
# enable it.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
case "$what" in supd|agent|both) ;; *) echo "usage: $0 supd|agent|both" >&2; exit 2;; esac
BIN_DIR=${BIN_DIR:-/usr/local/bin}
TARGET=${TARGET:-target/release}
D=${DESTDIR:-}

if [ ! -x "$TARGET/supd" ] || [ ! -x "$TARGET/sup-agent" ] || [ ! -x "$TARGET/supctl" ]; then
  echo "== building release binaries"
  cargo build --release --locked -p supd -p sup-agent -p supctl
fi
install -d -m 0755 "$D$BIN_DIR" "$D/etc/sup" "$D/etc/systemd/system"
install -m 0755 "$TARGET/supctl" "$D$BIN_DIR/supctl"

config() { # keeps an operator's edited config
  if [ -e "$D/etc/sup/$1" ]; then echo "keeping /etc/sup/$1"; else install -m 0644 "deploy/$1" "$D/etc/sup/$1"; fi
}
unit() {
  sed "s|/usr/local/bin/|$BIN_DIR/|g" "deploy/$1" > "$D/etc/systemd/system/$1"
  chmod 0644 "$D/etc/systemd/system/$1"
}

if [ "$what" = supd ] || [ "$what" = both ]; then
  install -m 0755 "$TARGET/supd" "$D$BIN_DIR/supd"
  if [ -z "$D" ]; then
    getent group sup >/dev/null || groupadd --system sup
    getent passwd sup >/dev/null || useradd --system --gid sup --home-dir /var/lib/sup --shell /usr/sbin/nologin sup
  fi
  config supd.toml
  unit supd.service
fi
if [ "$what" = agent ] || [ "$what" = both ]; then
  install -m 0755 "$TARGET/sup-agent" "$D$BIN_DIR/sup-agent"
  config sup-agent.toml
  config xid-rules.toml
  unit sup-agent.service
fi
if [ -z "$D" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
echo "installed. Next: create the cluster CA and certificates (mutual TLS), e.g."
echo "  supctl certs init --dir /etc/sup/pki --supd-name <supd's DNS name or IP> --operator <you>"
echo "  supctl certs issue --dir /etc/sup/pki node <node id>   # copy ca.pem, node-<id>.pem, node-<id>-key.pem"
echo "                                                        # to /etc/sup/pki/{ca,node,node-key}.pem on that node"
[ "$what" = agent ] || echo "  chown sup /etc/sup/pki/supd-key.pem"
echo "then edit /etc/sup/*.toml and"
[ "$what" = agent ] || echo "  systemctl enable --now supd"
[ "$what" = supd ] || echo "  systemctl enable --now sup-agent"
