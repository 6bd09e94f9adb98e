#!/usr/bin/env bash
# Build the project's image (Dockerfile at the repository root), choosing its base:
#
#   deploy/build-image.sh [IMAGE [BASE]]        (make image IMAGE=... BASE=...)
#
# BASE if given; else python:3.11-slim if it is here or can be pulled within PULL_TIMEOUT
# seconds (default 60); else a local Debian base, accompanist-base, built with
# deploy/base-image.sh (debootstrap) unless it exists. Prints what it chose and how long the
# build took. The host's locally added CA certificates (/usr/local/share/ca-certificates, e.g.
# a TLS-intercepting proxy's) are handed to pip for the build only.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-accompanist}
base=${2:-}
slim=python:3.11-slim
local_base=accompanist-base

if [[ -n "$base" ]]; then
    why="given"
elif docker image inspect "$slim" >/dev/null 2>&1; then
    base=$slim why="present locally"
elif timeout "${PULL_TIMEOUT:-60}" docker pull --quiet "$slim" >/dev/null 2>&1; then
    base=$slim why="pulled"
else
    echo "build-image: $slim is not here and cannot be pulled: using $local_base"
    deploy/base-image.sh "$local_base"
    base=$local_base why="built locally with debootstrap"
fi
echo "build-image: $image FROM $base ($why)"

extra_ca=""
shopt -s nullglob
cas=(/usr/local/share/ca-certificates/*.crt)
if (( ${#cas[@]} )); then
    extra_ca=$(cat "${cas[@]}")
fi

start=$(date +%s)
DOCKER_BUILDKIT=0 docker build --network host --force-rm \
    --build-arg BASE="$base" --build-arg EXTRA_CA_CERTS="$extra_ca" \
    -t "$image" .
size=$(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')
echo "build-image: built $image FROM $base in $(( $(date +%s) - start )) s ($size)"
