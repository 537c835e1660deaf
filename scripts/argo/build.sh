#!/usr/bin/env bash
# Ensure a real Argo Rollouts controller and its CRDs for canarywatch's integration tests.
#
# rollouts-controller is built from github.com/argoproj/argo-rollouts (version pinned in
# scripts/argo/go.mod, whose replace block repeats that module's own) into
#   ${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}/argo-rollouts-<version>/
# next to a copy of the same module's manifests/crds (all five CRDs), outside the clone. The build
# is skipped when the binary already exists; it is written under a temporary name and moved into
# place, so an interrupted build leaves nothing. Go's module and build caches stay at their
# default locations (also outside the clone).
#
# Prints the paths it ensured as shell assignments on stdout (ROLLOUTS_CONTROLLER=...,
# ROLLOUTS_CRDS=...); progress goes to stderr. Env: CANARYWATCH_CACHE, GO (go binary),
# GOBUILD_P (go build -p). `--crds-only`: the CRDs, not the controller.
set -euo pipefail

crds_only=false
[[ "${1:-}" == "--crds-only" ]] && crds_only=true

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_bin="${GO:-go}"
module=github.com/argoproj/argo-rollouts

version="$(awk -v m="$module" '$1 == "require" { $1 = "" ; $0 = $0 }
                $1 == m && $2 ~ /^v1\./ { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
    echo "build.sh: cannot find the $module version in $here/go.mod" >&2
    exit 1
fi
cache="${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}"
dest_dir="$cache/argo-rollouts-${version#v}"
dest="$dest_dir/rollouts-controller"
crds="$dest_dir/crds"

log() { echo "build.sh: $*" >&2; }

ensure_crds() {
    if [[ -s "$crds/rollout-crd.yaml" ]]; then
        return
    fi
    mkdir -p "$dest_dir"
    local src tmp
    src="$(cd "$here" && GOFLAGS=-mod=readonly "$go_bin" mod download -json "$module" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [[ -z "$src" || ! -d "$src/manifests/crds" ]]; then
        log "cannot find $module@$version/manifests/crds in the Go module cache"
        exit 1
    fi
    tmp="$(mktemp -d "$dest_dir/.crds.XXXXXX")"
    cp "$src"/manifests/crds/*-crd.yaml "$tmp/"
    chmod 0644 "$tmp"/*.yaml
    chmod 0755 "$tmp"
    rm -rf "$crds"
    mv "$tmp" "$crds"
    log "CRDs of $module $version copied into $crds"
}

ensure_controller() {
    if [[ -x "$dest" ]]; then
        log "rollouts-controller $version present: $dest"
        return
    fi
    mkdir -p "$dest_dir"
    local tmp
    tmp="$(mktemp "$dest_dir/.rollouts-controller.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -f '$tmp'" EXIT
    local pkg=$module/utils/version
    local ldflags="-s -w -X $pkg.version=${version#v} -X $pkg.gitTreeState=clean"
    log "building rollouts-controller $version into $dest (slow on a cold cache)"
    local start=$SECONDS
    (
        cd "$here"
        GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly" CGO_ENABLED=0 \
            "$go_bin" build ${GOBUILD_P:+-p "$GOBUILD_P"} -ldflags="$ldflags" \
            -o "$tmp" "$module/cmd/rollouts-controller"
    )
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dest"
    trap - EXIT
    log "built rollouts-controller in $((SECONDS - start)) s"
}

ensure_crds
if [[ "$crds_only" == false ]]; then
    ensure_controller
    echo "ROLLOUTS_CONTROLLER=$dest"
elif [[ -x "$dest" ]]; then
    echo "ROLLOUTS_CONTROLLER=$dest"
fi
echo "ROLLOUTS_CRDS=$crds"
