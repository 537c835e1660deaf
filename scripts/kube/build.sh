#!/usr/bin/env bash
# Ensure a real kube-apiserver and etcd for canarywatch's integration tests.
#
# kube-apiserver is built from k8s.io/kubernetes (version pinned in scripts/kube/go.mod) into
#   ${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}/kube-<version>/kube-apiserver
# which lives outside the clone. The build is skipped when the binary already exists; it is
# written under a temporary name and moved into place, so an interrupted build leaves nothing.
# Go's module and build caches stay at their default locations (also outside the clone).
#
# etcd: Debian's etcd-server package (installed with apt-get when missing).
#
# Prints the paths it ensured as shell assignments on stdout (KUBE_APISERVER=..., ETCD=...);
# progress goes to stderr. Env: CANARYWATCH_CACHE, GO (go binary), GOBUILD_P (go build -p).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_bin="${GO:-go}"

version="$(awk '$1 == "require" { $1 = "" ; $0 = $0 }
                $1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
    echo "build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
    exit 1
fi
cache="${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}"
dest_dir="$cache/kube-${version#v}"
dest="$dest_dir/kube-apiserver"

log() { echo "build.sh: $*" >&2; }

ensure_apiserver() {
    if [[ -x "$dest" ]]; then
        log "kube-apiserver $version present: $dest"
        return
    fi
    mkdir -p "$dest_dir"
    local tmp
    tmp="$(mktemp "$dest_dir/.kube-apiserver.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -f '$tmp'" EXIT
    local major minor pkg=k8s.io/component-base/version
    major="$(cut -d. -f1 <<<"${version#v}")"
    minor="$(cut -d. -f2 <<<"${version#v}")"
    local ldflags="-s -w"
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
    log "building kube-apiserver $version into $dest (slow on a cold cache)"
    local start=$SECONDS
    (
        cd "$here"
        GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly" CGO_ENABLED=0 \
            "$go_bin" build ${GOBUILD_P:+-p "$GOBUILD_P"} -ldflags="$ldflags" \
            -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver
    )
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dest"
    trap - EXIT
    log "built kube-apiserver in $((SECONDS - start)) s"
}

ensure_etcd() {
    if ! command -v etcd >/dev/null 2>&1; then
        log "installing etcd-server with apt-get"
        local sudo=()
        [[ "$(id -u)" == 0 ]] || sudo=(sudo)
        export DEBIAN_FRONTEND=noninteractive
        # Wait for a concurrent apt/dpkg run instead of failing on its lock.
        local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
        "${sudo[@]}" "${apt[@]}" update -qq >&2
        "${sudo[@]}" "${apt[@]}" install -y -qq --no-install-recommends etcd-server >&2
    fi
    etcd_path="$(command -v etcd)"
    log "etcd present: $etcd_path ($("$etcd_path" --version 2>/dev/null | head -n1))"
}

ensure_apiserver
ensure_etcd
echo "KUBE_APISERVER=$dest"
echo "ETCD=$etcd_path"
