# Shared by build, up and down. Sourced, not run.
# shellcheck shell=bash

CP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$CP_DIR/versions.env"

# Binaries live outside the checkout, keyed by version and by the hash of the
# module files, so every clone on this machine (and CI) reuses one build.
CACHE_ROOT="${PROVISIONER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/provisioner-rs}"
cp_build_key() {
  local h
  h="$(cat "$CP_DIR/go.mod" "$CP_DIR/go.sum" "$CP_DIR/build" | sha256sum | cut -c1-12)"
  echo "kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}-${h}"
}
CP_BIN_DIR="$CACHE_ROOT/controlplane/$(cp_build_key)"

# Where a running plane keeps its state; one plane per state dir.
CP_STATE_DIR="${CONTROLPLANE_STATE_DIR:-${TMPDIR:-/tmp}/provisioner-rs-controlplane}"

die() { echo "controlplane: error: $*" >&2; exit 1; }
log() { echo "controlplane: $*" >&2; }
