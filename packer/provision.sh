#!/usr/bin/env bash
# The image's provisioning, run by appliance.pkr.hcl's shell provisioner as root on the build VM:
# install the node with scripts/install-node.sh, then seal the machine so every instance made
# from the image boots fresh. Any failing step fails the build (set -euo pipefail): an image is
# either installed and sealed or not made at all.
#
# Input, from the provisioner's environment (one word each, so no quoting can split them):
#   SOURCE_TARBALL                 the uploaded `git archive` of the appliance (removed here)
#   INSTALL_ROOT                   root prefix to install into and seal (default /; the template
#                                  test uses a temp dir so it never touches the machine it runs on)
#   WITH_BUILTIN_MODELS, WITH_MINIO, WITH_TENSORFLOW_MODEL_SERVER   true/false
#   TENSORFLOW_MODEL_SERVER_SHA256 the checksum install-node.sh must require for it
#
# Sealing (each step logs a "[provision] seal:" line):
#   - cloud-init state and logs: what `cloud-init clean --logs` removes, so the first boot of
#     an instance runs cloud-init again (new instance id, user data, SSH host keys);
#   - /etc/machine-id emptied: systemd makes a new one on first boot (DHCP client ids, journal);
#   - every authorized_keys (the build's throw-away key is trusted there until now);
#   - the SSH host keys: instances of one image must not share them (cloud-init makes new ones);
#   - the uploaded source and apt's package cache.
set -euo pipefail

log() { echo "[provision] $*"; }

flag() {  # flag NAME: succeed when the environment variable NAME is true
  case "${!1:-false}" in
    true) return 0 ;;
    false) return 1 ;;
    *) echo "[provision] error: $1 must be true or false, got '${!1}'" >&2; exit 1 ;;
  esac
}

ROOT=${INSTALL_ROOT:-/}
ROOT_NOSLASH=${ROOT%/}
: "${SOURCE_TARBALL:?SOURCE_TARBALL is not set}"

install_args=(--prefix "$ROOT")
flag WITH_BUILTIN_MODELS && install_args+=(--with-builtin-models)
flag WITH_MINIO && install_args+=(--with-minio)
if flag WITH_TENSORFLOW_MODEL_SERVER; then
  install_args+=(--with-tensorflow-model-server
                 --tensorflow-model-server-sha256 "${TENSORFLOW_MODEL_SERVER_SHA256:-}")
fi

if [ "$ROOT" = / ] && command -v cloud-init >/dev/null; then
  log "waiting for the build VM's own cloud-init to finish"
  timeout 900 cloud-init status --wait >/dev/null || true   # "error" is fine: we reset it below
fi

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -xzf "$SOURCE_TARBALL" -C "$src"
log "install: scripts/install-node.sh ${install_args[*]}"
"$src/scripts/install-node.sh" "${install_args[@]}"
"$ROOT_NOSLASH/opt/appliance/current/bin/appliance" --help >/dev/null
log "install: done"

log "seal: source and package cache"
rm -f "$SOURCE_TARBALL"
if [ "$ROOT" = / ] && command -v apt-get >/dev/null; then
  apt-get clean
fi

log "seal: cloud-init state and logs"
if [ "$ROOT" = / ] && command -v cloud-init >/dev/null; then
  cloud-init clean --logs
fi
# The same on any root prefix (and a no-op after `cloud-init clean`): everything under
# /var/lib/cloud but the seed, and cloud-init's logs (cloudinit/cmd/clean.py).
if [ -d "$ROOT_NOSLASH/var/lib/cloud" ]; then
  find "$ROOT_NOSLASH/var/lib/cloud" -mindepth 1 -maxdepth 1 ! -name seed -exec rm -rf {} +
fi
rm -f "$ROOT_NOSLASH/var/log/cloud-init.log" "$ROOT_NOSLASH/var/log/cloud-init-output.log"

log "seal: machine-id"
truncate -s 0 "$ROOT_NOSLASH/etc/machine-id"
if [ -f "$ROOT_NOSLASH/var/lib/dbus/machine-id" ] && [ ! -L "$ROOT_NOSLASH/var/lib/dbus/machine-id" ]; then
  rm -f "$ROOT_NOSLASH/var/lib/dbus/machine-id"
fi

log "seal: authorized_keys"
rm -f "$ROOT_NOSLASH"/home/*/.ssh/authorized_keys "$ROOT_NOSLASH/root/.ssh/authorized_keys"

log "seal: SSH host keys"
rm -f "$ROOT_NOSLASH"/etc/ssh/ssh_host_*

log "sealed"
