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

# go_build_progress WHAT TOTAL go build -v ...: runs the build, passing its
# errors through, and every 20 s prints how many of about TOTAL packages it
# has compiled (go build -v names each package as it compiles it; cached ones
# are not named, so a warm build finishes long before the count) and a rough
# time left from the rate so far.
go_build_progress() {
  local what="$1" total="$2"; shift 2
  local start=$SECONDS last=$SECONDS done=0 line rc left
  log "compiling $what: about $total packages"
  exec 8< <("$@" 2>&1; echo "__rc=$?")
  while IFS= read -r line <&8; do
    case "$line" in
      __rc=*) rc="${line#__rc=}" ;;
      *[[:space:]:]*|'#'*) echo "$line" >&2 ;;
      *) done=$((done + 1)) ;;
    esac
    if (( SECONDS - last >= 20 )); then
      last=$SECONDS
      left=""
      if (( done > 0 && done < total )); then
        left=", roughly $(( ( (SECONDS - start) * (total - done) / done + 59 ) / 60 )) min left"
      fi
      log "compiling $what: $done of ~$total packages after $((SECONDS - start))s$left"
    fi
  done
  exec 8<&-
  log "compiled $what in $((SECONDS - start))s ($done packages compiled, the rest cached)"
  return "${rc:-1}"
}
