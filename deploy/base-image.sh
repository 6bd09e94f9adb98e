#!/usr/bin/env bash
# Build a local base image NAME: a minimal Debian bookworm with python3 and python3-venv, made
# with debootstrap and `docker import`, for machines that cannot pull python:3.11-slim (no
# image registry). About a minute; needs root, debootstrap and a Debian mirror.
#
#   deploy/base-image.sh [--force] NAME
#
# An existing NAME is kept unless --force. The debootstrap folder is removed even on failure
# or Ctrl-C. MIRROR overrides the Debian mirror (default: deb.debian.org).
set -euo pipefail

usage() { echo "usage: $0 [--force] NAME" >&2; exit 2; }
force=0
name=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -*) usage ;;
        *) [[ -z "$name" ]] || usage; name="$arg" ;;
    esac
done
[[ -n "$name" ]] || usage

if [[ $force -eq 0 ]] && docker image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name exists (--force rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "$0: debootstrap is not installed" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "$0: debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d /tmp/accompanist-base.XXXXXX)
log=$(mktemp /tmp/accompanist-base-log.XXXXXX)
# A killed debootstrap can leave /proc or /sys mounted inside the folder: unmount before rm,
# or rm would walk into the host's /proc.
child=""
cleanup() {
    # An interrupted debootstrap is stopped with everything it started (its own session).
    if [[ -n "$child" ]] && kill -TERM -- "-$child" 2>/dev/null; then
        wait "$child" 2>/dev/null || true
    fi
    for mount in $(awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$mount" || true
    done
    rm -rf --one-file-system "$root" "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
# In the background and waited for, so that a signal is acted on at once, not when it ends.
setsid debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "${MIRROR:-http://deb.debian.org/debian}" >"$log" 2>&1 &
child=$!
if ! wait "$child"; then
    child=""
    tail -20 "$log" >&2
    echo "$0: debootstrap failed" >&2
    exit 1
fi
child=""
# Nothing a container needs: package lists and caches, documentation (the copyright files stay).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root"/usr/share/doc -type f ! -name copyright -delete
tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$name" >/dev/null
echo "built base image $name in $(( $(date +%s) - start )) s ($(docker image inspect --format '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1 / 1e6}'))"
