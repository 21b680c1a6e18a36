#!/usr/bin/env bash
# Install (if missing) and start a Docker engine for the tests: dockerd with its
# data in a state directory of its own, listening on a socket of its own (so it
# never touches a system engine). Idempotent: when the engine this script started
# is still up, it only prints how to use it.
#
# Storage driver: overlay2 when an overlay mount works in the state directory
# (it does on our machines: image builds take ~10 s instead of ~90 s, because vfs
# copies the whole tree for every build step), else vfs.
# DREAMCATCHER_DOCKER_STORAGE=vfs|overlay2 forces one.
#
#   docker/setup-engine.sh [STATE_DIR]      # default: ${DREAMCATCHER_DOCKER_STATE:-/tmp/dreamcatcher-docker}
#   . STATE_DIR/env                          # exports DOCKER_HOST (and DREAMCATCHER_DOCKERD_PID)
#   docker/stop-engine.sh STATE_DIR          # stops it (by its pid) and removes its data
#
# Needs root (apt-get, dockerd). No image is pulled: see docker/build-local-images.sh.
set -euo pipefail

state="${1:-${DREAMCATCHER_DOCKER_STATE:-/tmp/dreamcatcher-docker}}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
sock="$state/docker.sock"
pidfile="$state/dockerd.pid"
log="$state/dockerd.log"
export DOCKER_HOST="unix://$sock"

say() { printf 'setup-engine: %s\n' "$*" >&2; }

write_env() {
    {
        printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST"
        printf 'export DREAMCATCHER_DOCKERD_PID=%q\n' "$(cat "$pidfile")"
        printf 'export DREAMCATCHER_DOCKER_STATE=%q\n' "$state"
    } >"$state/env"
    say "engine up (pid $(cat "$pidfile")): . $state/env   # sets DOCKER_HOST=$DOCKER_HOST"
    say "stop it with: $(dirname "$0")/stop-engine.sh $state"
}

# -- install ------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$state/apt.log" 2>&1 || {
        tail -30 "$state/apt.log" >&2
        exit 1
    }
fi

# -- already running? -------------------------------------------------------------
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && docker info >/dev/null 2>&1; then
    say "already running"
    write_env
    exit 0
fi

# -- start --------------------------------------------------------------------------
mkdir -p "$state/data" "$state/exec"
rm -f "$sock" "$pidfile"
storage="${DREAMCATCHER_DOCKER_STORAGE:-}"
if [ -z "$storage" ]; then
    probe="$state/overlay-probe"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    storage=vfs
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        storage=overlay2
    fi
    rm -rf "$probe"
fi
say "starting dockerd ($storage storage, data in $state/data)"
# setsid: the engine outlives this script; it is stopped by pid (stop-engine.sh)
setsid dockerd \
    --storage-driver="$storage" \
    --data-root "$state/data" \
    --exec-root "$state/exec" \
    --pidfile "$pidfile" \
    --host "$DOCKER_HOST" \
    >"$log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        write_env
        exit 0
    fi
    if [ -s "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
say "dockerd did not answer; its log:"
tail -40 "$log" >&2
exit 1
