#!/usr/bin/env bash
# Configure the compose example into DIR and bring it up; returns once every container is
# healthy (or fails, with the logs of those that are not). Needs docker, docker-compose and the
# image (make image): configure.py runs inside it, so the host needs no Python of its own.
#
#   [COMPOSE_PROJECT_NAME=...] [WAREHOUSE_SIDECAR_PORT=...] deploy/compose/up.sh DIR
#
# Settings (addresses, ports, ACCOMPANIST_IMAGE) come from the environment, see configure.py;
# DIR/.env keeps them, and the project name, for every later docker-compose command:
#
#   docker-compose --env-file DIR/.env -f deploy/compose/docker-compose.yml ps|logs|down -v
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
if [[ -n "$(ls -A "$dir")" ]]; then
    echo "up: $dir is not empty: a deployment is configured once (to start it again: docker-compose --env-file $dir/.env -f $here/docker-compose.yml up -d)" >&2
    exit 1
fi
image=${ACCOMPANIST_IMAGE:-accompanist}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-accompanist-warehouse}

# The containers run as the owner of DIR's files: the caller, or the image's own user (10001)
# for root, which must not run them.
if [[ $(id -u) -eq 0 ]]; then
    owner=10001:10001
    chown "$owner" "$dir"
else
    owner="$(id -u):$(id -g)"
fi
docker run --rm --network none --user "$owner" \
    --env-file <(env | grep -E '^(ACCOMPANIST_IMAGE|COMPOSE_PROJECT_NAME|[A-Z]+_(HOST|SIDECAR_PORT|SERVICE_PORT))=' || true) \
    -e ACCOMPANIST_DEPLOY="$dir" \
    -v "$here/configure.py:/opt/accompanist/configure.py:ro" -v "$dir:/deploy" \
    "$image" python /opt/accompanist/configure.py /deploy

compose=(docker-compose --env-file "$dir/.env" -f "$here/docker-compose.yml")
"${compose[@]}" up -d

deadline=$(( $(date +%s) + ${UP_TIMEOUT:-120} ))
while :; do
    waiting=()
    for id in $("${compose[@]}" ps -q); do
        state=$(docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
        read -r name status health <<<"$state"
        [[ "$status" == running && "$health" == healthy ]] || waiting+=("${name#/}:$status/${health:-none}")
    done
    if (( ${#waiting[@]} == 0 )); then
        break
    fi
    if (( $(date +%s) > deadline )); then
        echo "up: not healthy after ${UP_TIMEOUT:-120} s: ${waiting[*]}" >&2
        "${compose[@]}" logs --tail 30 >&2
        exit 1
    fi
    sleep 1
done
echo "up: $COMPOSE_PROJECT_NAME is healthy; initiator at https://$(grep ^WAREHOUSE_HOST= "$dir/.env" | cut -d= -f2):$(grep ^WAREHOUSE_SIDECAR_PORT= "$dir/.env" | cut -d= -f2)"
echo "up: stop it with: docker-compose --env-file $dir/.env -f $here/docker-compose.yml down -v"
