#!/usr/bin/env bash
# Build the kubectl-argo-rollouts plugin from the same Go module (and version) as the controller
# scripts/argo/build.sh builds, into the same cache directory:
#   ${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}/argo-rollouts-<version>/kubectl-argo-rollouts
# Skipped when the binary exists. The plugin needs a few packages the controller does not, so the
# build runs in a temporary copy of scripts/argo (go.mod/go.sum resolved there, -mod=mod); the
# clone is not touched. Prints KUBECTL_ARGO_ROLLOUTS=<path> on stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_bin="${GO:-go}"
module=github.com/argoproj/argo-rollouts
version="$(awk -v m="$module" '$1 == m && $2 ~ /^v1\./ { print $2; exit }' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build-plugin.sh: no $module version in $here/go.mod" >&2; exit 1; }
cache="${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}"
dest_dir="$cache/argo-rollouts-${version#v}"
dest="$dest_dir/kubectl-argo-rollouts"
if [[ ! -x "$dest" ]]; then
    mkdir -p "$dest_dir"
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cp "$here/go.mod" "$here/go.sum" "$work/"
    pkg=$module/utils/version
    echo "build-plugin.sh: building kubectl-argo-rollouts $version into $dest (slow on a cold cache)" >&2
    (
        cd "$work"
        GOFLAGS="-mod=mod" "$go_bin" get "$module/cmd/kubectl-argo-rollouts@$version" >&2
        GOFLAGS="-trimpath -mod=mod" CGO_ENABLED=0 "$go_bin" build ${GOBUILD_P:+-p "$GOBUILD_P"} \
            -ldflags="-s -w -X $pkg.version=${version#v} -X $pkg.gitTreeState=clean" \
            -o "$work/kubectl-argo-rollouts" "$module/cmd/kubectl-argo-rollouts"
    )
    chmod 0755 "$work/kubectl-argo-rollouts"
    mv -f "$work/kubectl-argo-rollouts" "$dest"
fi
echo "KUBECTL_ARGO_ROLLOUTS=$dest"
