#!/usr/bin/env bash
# Build, without pulling anything from a registry, the images the compose stack
# and the testcontainers tests need, from Debian's packages (../shared/docker.md):
#
#   LOCAL_PG_IMAGE      a stand-in for postgres:17: Debian's PostgreSQL, with an
#                       entrypoint that honours POSTGRES_USER / POSTGRES_PASSWORD /
#                       POSTGRES_DB like the official image (initialises on first
#                       start, listens on all addresses, port 5432)
#   LOCAL_PYTHON_IMAGE  a stand-in for python:3.12-slim: Debian's python3 + pip
#   PROJECT_IMAGE       the Dockerfile, FROM the local python image, installed from
#                       wheels built on this machine (pip wheel '.[cli]' -w docker/wheels: the image runs the merger)
#
#   docker/build-local-images.sh [OUT_ENV_FILE]
#
# Needs a running engine (docker/setup-engine.sh; DOCKER_HOST from its env file),
# debootstrap and root. Writes OUT_ENV_FILE (default docker/local-images.env) with
# DREAMCATCHER_PG_IMAGE, DREAMCATCHER_BASE_IMAGE and DREAMCATCHER_IMAGE, ready for
# `docker-compose` and the tests.
#
# The Debian mirror and suite are the ones apt already uses on this machine, read
# at run time. Root filesystems are cached as tarballs under
# ${DREAMCATCHER_ROOTFS_CACHE:-/var/tmp/dreamcatcher-rootfs} (about 1 GB), keyed by a
# hash of the mirror, suite and packages, and the finished image trees next to them,
# keyed by that and by what is added (entrypoint, trimming): a second run on the same
# machine skips debootstrap and only imports (~45 s in all); a clean machine builds
# them (both at once: about two minutes here).
# DREAMCATCHER_ROOTFS_CACHE= (empty) disables the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

out_env="${1:-docker/local-images.env}"
LOCAL_PG_IMAGE="${LOCAL_PG_IMAGE:-dreamcatcher-local/postgres:debian}"
LOCAL_PYTHON_IMAGE="${LOCAL_PYTHON_IMAGE:-dreamcatcher-local/python:debian}"
PROJECT_IMAGE="${PROJECT_IMAGE:-dreamcatcher-pg:local}"
cache="${DREAMCATCHER_ROOTFS_CACHE-/var/tmp/dreamcatcher-rootfs}"
PYTHON="${PYTHON:-.venv/bin/python}"

t0=$SECONDS
say() { printf 'build-local-images: [%3ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }

docker info >/dev/null 2>&1 || { say "no Docker engine answers (run docker/setup-engine.sh, then . its env file)"; exit 1; }
command -v debootstrap >/dev/null || { say "debootstrap is missing (docker/setup-engine.sh installs it)"; exit 1; }

# The mirror and suite apt uses here (the first main suite: no '-updates' / '-security').
read -r mirror suite < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' \
    | awk '$2 !~ /-/ {print $1, $2; exit}')
[ -n "${mirror:-}" ] && [ -n "${suite:-}" ] || { say "cannot read apt's Debian mirror (apt-get update first?)"; exit 1; }
say "Debian $suite from apt's mirror"

work="$(mktemp -d "${TMPDIR:-/tmp}/dc-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# rootfs NAME PACKAGES -> path of a tarball of a fresh debootstrap root (cached).
rootfs() {
    local name="$1" packages="$2"
    local key
    key="$(printf '%s\n' "$mirror" "$suite" "$packages" | sha256sum | cut -c1-16)"
    if [ -n "$cache" ] && [ -s "$cache/$name-$key.tar" ]; then
        say "$name: root filesystem from the cache ($cache/$name-$key.tar)"
        echo "$cache/$name-$key.tar"
        return
    fi
    local root="$work/$name-debootstrap" tarball="$work/$name.tar" t=$SECONDS
    say "$name: debootstrap --variant=minbase --include=$packages $suite (one to two minutes)"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
        >"$work/$name-debootstrap.log" 2>&1; then
        tail -30 "$work/$name-debootstrap.log" >&2
        exit 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$tarball" .
    rm -rf "$root"
    say "$name: root filesystem built in $((SECONDS - t)) s"
    if [ -n "$cache" ]; then
        mkdir -p "$cache"
        rm -f "$cache/$name"-*.tar  # older keys
        mv "$tarball" "$cache/$name-$key.tar.partial"
        mv "$cache/$name-$key.tar.partial" "$cache/$name-$key.tar"
        echo "$cache/$name-$key.tar"
    else
        echo "$tarball"
    fi
}

# image_tarball TARBALL HOOK [FILE...] -> path of the image's root filesystem: TARBALL
# unpacked, HOOK run on it (as root, outside any chroot; FILEs are what it copies in),
# slimmed down, packed again. Cached next to the root filesystems, keyed by all of that.
image_tarball() {
    local tarball="$1" hook="$2"
    shift 2
    local key out
    key="$(printf '%s\n' "$tarball" "$(declare -f "$hook" slim)" "$(cat "$@" /dev/null)" \
        | sha256sum | cut -c1-16)"
    out="$work/$hook-$key.tar"
    if [ -n "$cache" ] && [ -s "$cache/$hook-$key.tar" ]; then
        echo "$cache/$hook-$key.tar"
        return
    fi
    local root="$work/root-$hook"
    mkdir -p "$root"
    tar --numeric-owner -C "$root" -xf "$tarball"
    "$hook" "$root"
    slim "$root"
    tar --numeric-owner -C "$root" -cf "$out" .
    rm -rf "$root"
    if [ -n "$cache" ]; then
        rm -f "$cache/$hook"-*.tar
        mv "$out" "$cache/$hook-$key.tar.partial" && mv "$cache/$hook-$key.tar.partial" "$cache/$hook-$key.tar"
        out="$cache/$hook-$key.tar"
    fi
    echo "$out"
}

slim() {
    rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* \
        "$1"/usr/share/locale/* "$1"/tmp/* "$1"/var/tmp/*
}

# -- PostgreSQL ---------------------------------------------------------------------
postgres_hook() {
    local root="$1"
    # the cluster Debian's package made at install time is not ours: the entrypoint makes one
    rm -rf "$root"/var/lib/postgresql/*/main "$root"/etc/postgresql/*/main
    # no JIT: llvmjit and the LLVM it loads are 3/4 of the image (the server runs without)
    rm -rf "$root"/usr/lib/postgresql/*/lib/llvmjit* "$root"/usr/lib/postgresql/*/lib/bitcode \
        "$root"/usr/lib/x86_64-linux-gnu/libLLVM* "$root"/usr/lib/x86_64-linux-gnu/libz3.so*
    install -m 0755 docker/postgres-entrypoint.sh "$root/usr/local/bin/docker-entrypoint.sh"
    mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql"
    chroot "$root" chown -R postgres:postgres /var/lib/postgresql /run/postgresql
}
# both root filesystems at once (debootstrap mostly waits on the network)
rootfs postgres postgresql >"$work/postgres.path" &
pg_job=$!
rootfs python "python3,python3-venv,python3-pip,ca-certificates" >"$work/python.path" &
py_job=$!
wait "$pg_job" || { say "building the PostgreSQL root filesystem failed"; exit 1; }
wait "$py_job" || { say "building the Python root filesystem failed"; exit 1; }
pg_tar="$(cat "$work/postgres.path")"
py_tar="$(cat "$work/python.path")"
pg_major="$(tar -tf "$pg_tar" ./usr/lib/postgresql/ 2>/dev/null \
    | sed -n 's|^\./usr/lib/postgresql/\([0-9]*\)/$|\1|p' | sort -n | tail -1)"
[ -n "$pg_major" ] || { say "no PostgreSQL server in the root filesystem"; exit 1; }
pg_image_tar="$(image_tarball "$pg_tar" postgres_hook docker/postgres-entrypoint.sh)"
say "importing $LOCAL_PG_IMAGE (PostgreSQL $pg_major)"
docker import \
    --change "ENV PATH=/usr/lib/postgresql/$pg_major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV PGDATA=/var/lib/postgresql/data" \
    --change "ENV LANG=C.UTF-8" \
    --change "EXPOSE 5432" \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    - "$LOCAL_PG_IMAGE" <"$pg_image_tar" >/dev/null

# -- Python -------------------------------------------------------------------------
python_hook() { :; }
# pip may install system-wide, as in python:3.12-slim (Debian marks its python "externally managed")
py_image_tar="$(image_tarball "$py_tar" python_hook)"
say "importing $LOCAL_PYTHON_IMAGE"
docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
    --change 'CMD ["python3"]' \
    - "$LOCAL_PYTHON_IMAGE" <"$py_image_tar" >/dev/null

# -- the project --------------------------------------------------------------------
# Wheels must fit the image's Python: build them with a host Python of the same version.
image_py="$(tar -tf "$py_tar" ./usr/bin/ | sed -n 's|^\./usr/bin/python\(3\.[0-9]*\)$|\1|p' | sort -V | tail -1)"
host_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$image_py" != "$host_py" ]; then
    say "the image has Python $image_py but $PYTHON is $host_py: set PYTHON to a python$image_py"
    exit 1
fi
say "pip wheel '.[cli]' -w docker/wheels (Python $host_py)"
rm -rf docker/wheels
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip wheel --quiet '.[cli]' -w docker/wheels >"$work/wheel.log" 2>&1 || {
    tail -30 "$work/wheel.log" >&2
    exit 1
}
say "docker build -t $PROJECT_IMAGE (FROM $LOCAL_PYTHON_IMAGE, wheels from docker/wheels)"
# the legacy builder (Debian's engine has no BuildKit); its deprecation notice goes to the log
DOCKER_BUILDKIT=0 docker build \
    --build-arg "BASE_IMAGE=$LOCAL_PYTHON_IMAGE" \
    --build-arg "WHEELS=docker/wheels" \
    -t "$PROJECT_IMAGE" . >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    exit 1
}

cat >"$out_env" <<ENV
DREAMCATCHER_PG_IMAGE=$LOCAL_PG_IMAGE
DREAMCATCHER_BASE_IMAGE=$LOCAL_PYTHON_IMAGE
DREAMCATCHER_IMAGE=$PROJECT_IMAGE
ENV
say "done in $((SECONDS - t0)) s; images: $LOCAL_PG_IMAGE, $LOCAL_PYTHON_IMAGE, $PROJECT_IMAGE ($out_env)"
