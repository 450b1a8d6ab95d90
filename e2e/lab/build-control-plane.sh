#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from Debian's
# own `kubernetes` source package (1.20.2, vendored) and caches the binaries
# outside the repo, keyed by the source version. Rebuilds only when missing.
#
# Facts this relies on (verified on Debian 12):
#  - `apt-get source kubernetes` needs a deb-src entry for the configured suites;
#  - the build needs golang-go (1.19), rsync and jq;
#  - the vendored github.com/modern-go/reflect2 v1.0.1 crashes the apiserver
#    under Go 1.19 (SIGSEGV in mapiterinit on the first custom-resource create),
#    so it is replaced by Debian's golang-github-modern-go-reflect2-dev (1.0.2);
#  - the vendored github.com/go-openapi/validate v0.19.8 treats an empty string as null when
#    built with Go >= 1.16, so a custom resource with "" in a string field is refused
#    ('must be of type string: "null"', kubernetes/kubernetes#99804). The upstream fix
#    (go-openapi/validate#138) checks only for a nil value; it is applied here.
# BUILD_REVISION names the patch set: bump it when the patches change, so caches rebuild.
set -euo pipefail

CACHE="${MODELROLLOUT_LAB_CACHE:-$HOME/.cache/modelrollout-lab}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_deb_src() {
  if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        | $SUDO tee /etc/apt/sources.list.d/modelrollout-deb-src.sources >/dev/null
    else
      grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
        | $SUDO tee /etc/apt/sources.list.d/modelrollout-deb-src.list >/dev/null
    fi
    $SUDO apt-get update -qq; apt_updated=1
  fi
}

src_version() { apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}'; }

ensure_deb_src
version=$(src_version)
# Only refresh the package lists when they do not know the source package yet.
if [ -z "$version" ] && [ $apt_updated = 0 ]; then
  $SUDO apt-get update -qq; apt_updated=1; version=$(src_version)
fi
[ -n "$version" ] || { echo "cannot find Debian source package 'kubernetes'" >&2; exit 1; }
BUILD_REVISION=mr3
out="$CACHE/kubernetes-$version-$BUILD_REVISION/bin"
built() { [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ]; }
if built; then echo "$out"; exit 0; fi
# One build at a time: a second caller waits for the first and then finds the cache filled.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
if built; then echo "$out"; exit 0; fi

apt_install dpkg-dev golang-go rsync jq golang-github-modern-go-reflect2-dev build-essential
work="$CACHE/build-$version"
rm -rf "$work"; mkdir -p "$work"; cd "$work"
apt-get source -qq --download-only kubernetes >/dev/null 2>&1 || apt-get source -qq --download-only kubernetes
dpkg-source -x --no-check ./kubernetes_*.dsc src >/dev/null
cd src
# Swap the crashing reflect2 for Debian's 1.0.2 sources.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
# Empty strings are values, not null (go-openapi/validate#138, kubernetes#99817): both the
# vendored go-openapi/validate and kube-openapi's fork of it (which CR validation uses) carry
# the zero-value check.
for validate_type in vendor/github.com/go-openapi/validate/type.go \
                     vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$validate_type"
  if grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$validate_type"; then
    echo "patching $validate_type failed" >&2; exit 1
  fi
done
# GOPATH as debian/rules lays it out: the tree at _output/local/go/src/k8s.io/kubernetes.
export GOPATH="$PWD/_output/local/go"
export GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$work/gocache" GOPROXY=off
export KUBE_GIT_VERSION="v${version%%-*}" KUBE_GIT_TREE_STATE=clean
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$PWD" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$work/build.log" 2>&1 || {
  tail -50 "$work/build.log" >&2; exit 1; }
mkdir -p "$out"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  cp "$(find _output -type f -name "$b" -perm -u+x | head -1)" "$out/$b"
done
cd /; rm -rf "$work"
echo "$out"
