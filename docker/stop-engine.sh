#!/usr/bin/env bash
# Stop the engine docker/setup-engine.sh started (by its pid) and remove its state.
#   docker/stop-engine.sh [STATE_DIR]   # default: ${DREAMCATCHER_DOCKER_STATE:-/tmp/dreamcatcher-docker}
set -uo pipefail
state="${1:-${DREAMCATCHER_DOCKER_STATE:-/tmp/dreamcatcher-docker}}"
pidfile="$state/dockerd.pid"
if [ -s "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        # stop the containers it runs first (they are its children through containerd-shim)
        DOCKER_HOST="unix://$state/docker.sock" docker ps -q 2>/dev/null \
            | xargs -r env DOCKER_HOST="unix://$state/docker.sock" docker rm -f >/dev/null 2>&1
        kill "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "stop-engine: dockerd $pid stopped" >&2
    fi
fi
# anything still mounted under the state directory (overlay layers, network namespaces)
if [ -d "$state" ]; then
    grep -o " $state/[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | while read -r target; do
        umount -l "$target" 2>/dev/null || true
    done
fi
case "$state" in
    /tmp/*|/var/tmp/*|"${TMPDIR:-/nonexistent}"/*) rm -rf "$state" ;;
    *) echo "stop-engine: left $state in place (not under a temp directory)" >&2 ;;
esac
