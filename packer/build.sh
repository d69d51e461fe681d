#!/usr/bin/env bash
# Build the appliance VM image with packer/appliance.pkr.hcl.
#
#   packer/build.sh                         # both images (qemu qcow2 and an AWS AMI)
#   packer/build.sh -only=qemu.appliance    # one of them; other arguments go to `packer build`
#   packer/build.sh --prepare DIR           # only write the build inputs into DIR and print the
#                                           # -var flags (what the tests run `packer validate` with)
#
# Inputs made per build, in a private temp dir removed afterwards (nothing of it is kept):
#   - the appliance source: `git archive HEAD` (commit what you want in the image);
#   - a throw-away SSH key pair for the qemu build VM, and the cloud-init NoCloud seed that
#     authorizes its public half for the base image's default user. The provisioning removes
#     authorized_keys before the image is sealed.
# AWS credentials come from the usual AWS environment/profile; none is read or stored here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

prepare() {
  local dir=$1
  mkdir -p "$dir/seed"
  chmod 0700 "$dir"
  git -C "$repo" archive --format=tar.gz -o "$dir/appliance-src.tar.gz" HEAD
  rm -f "$dir/build_key" "$dir/build_key.pub"
  ssh-keygen -q -t ed25519 -N "" -C "appliance-packer-build" -f "$dir/build_key"
  printf 'instance-id: appliance-build\nlocal-hostname: appliance-build\n' > "$dir/seed/meta-data"
  { echo "#cloud-config"; echo "ssh_authorized_keys:"; echo "  - $(cat "$dir/build_key.pub")"; } \
    > "$dir/seed/user-data"
  echo "-var source_tarball=$dir/appliance-src.tar.gz"
  echo "-var ssh_private_key_file=$dir/build_key"
  echo "-var seed_dir=$dir/seed"
}

if [ "${1:-}" = "--prepare" ]; then
  prepare "${2:?--prepare needs a directory}"
  exit 0
fi

command -v packer >/dev/null || { echo "error: packer is not installed (apt-get install packer)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t vars < <(prepare "$work" | tr ' ' '\n')
cd "$here"
packer build "${vars[@]}" "$@" appliance.pkr.hcl
