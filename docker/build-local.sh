#!/usr/bin/env bash
# Builds the kvstore image from docker/Dockerfile without pulling anything: for
# machines with no registry access (and for the tests).
#
#   cargo build --release -p kvstore-server -p kv-cli
#   docker/build-local.sh [-t TAG] [--bin-dir DIR] [--keep-debug] [-- DOCKER_BUILD_ARGS...]
#   docker/build-local.sh --etcd [-t TAG] [--etcd-bin FILE|NAME] [-- DOCKER_BUILD_ARGS...]
#
# It makes the Dockerfile's two base images locally with `docker import`, from
# files of this host (so the host must be Linux with glibc, like the image):
#   - BUILDER_IMAGE: /bin/sh and its libraries, plus the binaries `kvstore-server`
#     and `kv` from DIR (default: $CARGO_TARGET_DIR/release or target/release) in
#     /out, which makes the Dockerfile skip compiling;
#   - RUNTIME_IMAGE: only the shared libraries the binaries load (per `ldd`) and
#     the dynamic loader, plus /tmp;
# then runs `docker build -f docker/Dockerfile` on the workspace (sent without
# target/ and .git/) with those two images as build arguments. The result is
# tagged TAG (default kvstore:latest, the image docker/compose.yaml runs); the
# temporary base images and the build stage's intermediate images are removed
# again. Like the Dockerfile's own build, it leaves out the debug info (it strips
# copies of the binaries, if `strip` is installed) unless --keep-debug is given.
#
# With --etcd it builds the etcd image of docker/compose.cluster.yaml instead
# (docker/etcd.Dockerfile, default tag kvstore-etcd:latest): its base image holds
# /bin/sh, Debian's `etcd` (FILE, or the command NAME on the PATH, or /usr/bin/etcd of the `etcd-server` package
# fetched with `apt-get download` and unpacked with `dpkg -x`: no root needed)
# and the libraries they load, so the Dockerfile finds etcd installed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tag=kvstore:latest
bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
strip=true
etcd=false
etcd_bin=
while [ $# -gt 0 ]; do
    case $1 in
        -t | --tag) tag=$2; tag_given=true; shift 2 ;;
        --etcd) etcd=true; shift ;;
        --etcd-bin) etcd_bin=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --keep-debug) strip=false; shift ;;
        --) shift; break ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-local.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if $etcd && [ -z "${tag_given:-}" ]; then
    tag=kvstore-etcd:latest
fi
# --etcd-bin takes a file or the name of a command on the PATH.
if [ -n "$etcd_bin" ] && [ ! -f "$etcd_bin" ]; then
    case $etcd_bin in
        */*) found= ;;
        *) found=$(command -v -- "$etcd_bin" 2>/dev/null || true) ;;
    esac
    if [ -z "$found" ] || [ ! -f "$found" ]; then
        echo "build-local.sh: --etcd-bin $etcd_bin: no such file, nor a command of that name on the PATH" >&2
        exit 1
    fi
    etcd_bin=$found
fi
for bin in kvstore-server kv; do
    if ! $etcd && [ ! -x "$bin_dir/$bin" ]; then
        echo "build-local.sh: $bin_dir/$bin is missing: run \`cargo build --release -p kvstore-server -p kv-cli\` or pass --bin-dir" >&2
        exit 1
    fi
done

suffix="$$-$(date +%s%N)"
builder_image="kvstore-local-builder:$suffix"
runtime_image="kvstore-local-runtime:$suffix"
work=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-build-local.XXXXXX")
built=false

# Every image id descending from image $1 (for the classic builder's
# intermediate images, which have no tag).
descendants() {
    local base
    base=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null) || return 0
    docker image ls -a -q --no-trunc | sort -u | xargs -r docker image inspect -f '{{.Id}} {{.Parent}}' |
        awk -v base="$base" '
            { parent[$1] = $2 }
            END {
                found[base] = 1
                do {
                    more = 0
                    for (id in parent) if (!(id in found) && (parent[id] in found)) { found[id] = 1; more = 1 }
                } while (more)
                for (id in found) if (id != base) print id
            }'
}

# Removes image $1 and everything built on it.
remove_tree() {
    local ids
    ids=$(descendants "$1")
    local base
    base=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null) || return 0
    docker image rm "$1" >/dev/null 2>&1 || true
    # Removing an image also removes its untagged parents, so most of these are
    # gone by the time their turn comes.
    for id in $ids $base; do
        docker image rm "$id" >/dev/null 2>&1 || true
    done
}

cleanup() {
    rm -rf "$work"
    remove_tree "$builder_image"
    if $built; then
        # Only untags: the layer stays as the parent of the image.
        docker image rm "$runtime_image" >/dev/null 2>&1 || true
    else
        remove_tree "$runtime_image"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Copies file $2 into the tree $1 at the same path, following links.
put() {
    mkdir -p "$1$(dirname "$2")"
    cp -L "$2" "$1$2"
}

# Copies the shared libraries and loader that binary $2 needs into the tree $1.
put_libs() {
    local lib
    for lib in $(ldd "$2" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        put "$1" "$lib"
    done
}

# Imports the tree $1 as image $2, with the PATH of the Debian images.
import() {
    tar -C "$1" --numeric-owner --owner=0 --group=0 -cf - . |
        docker image import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "$2" >/dev/null
}

if $etcd; then
    base="$work/etcd"
    mkdir -p "$base/bin" "$base/usr/bin" "$base/out/data" "$base/tmp"
    chmod 1777 "$base/tmp"
    if [ -z "$etcd_bin" ]; then
        echo "build-local.sh: fetching Debian's etcd-server package"
        (cd "$work" && apt-get download etcd-server >/dev/null)
        dpkg -x "$work"/etcd-server_*.deb "$work/deb"
        etcd_bin="$work/deb/usr/bin/etcd"
    fi
    cp -L "$(command -v sh)" "$base/bin/sh"
    put_libs "$base" "$base/bin/sh"
    cp -L "$etcd_bin" "$base/usr/bin/etcd"
    put_libs "$base" "$base/usr/bin/etcd"
    import "$base" "$builder_image"
    echo "build-local.sh: docker build -f docker/etcd.Dockerfile -t $tag"
    tar -C "$root/docker" -cf - etcd.Dockerfile |
        docker build --force-rm -f etcd.Dockerfile \
            --build-arg "BASE_IMAGE=$builder_image" -t "$tag" "$@" -
    # The base image stays as the parent of the image: only its tag goes.
    docker image rm "$builder_image" >/dev/null 2>&1 || true
    echo "build-local.sh: built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
    exit 0
fi

echo "build-local.sh: base images from $bin_dir"
builder="$work/builder"
runtime="$work/runtime"
mkdir -p "$builder/bin" "$builder/out/data" "$builder/tmp" "$runtime/tmp"
chmod 1777 "$builder/tmp" "$runtime/tmp"
cp -L "$(command -v sh)" "$builder/bin/sh"
put_libs "$builder" "$builder/bin/sh"
for bin in kvstore-server kv; do
    cp -L "$bin_dir/$bin" "$builder/out/$bin"
    if $strip; then
        if command -v strip >/dev/null; then
            strip --strip-debug "$builder/out/$bin"
        else
            echo "build-local.sh: no strip command: keeping the debug info of $bin" >&2
        fi
    fi
    put_libs "$runtime" "$builder/out/$bin"
done
import "$builder" "$builder_image"
import "$runtime" "$runtime_image"

echo "build-local.sh: docker build -f docker/Dockerfile -t $tag"
tar -C "$root" --exclude=./target --exclude=./.git --exclude=./data -cf - . |
    docker build --force-rm -f docker/Dockerfile \
        --build-arg "BUILDER_IMAGE=$builder_image" \
        --build-arg "RUNTIME_IMAGE=$runtime_image" \
        -t "$tag" "$@" -
built=true
echo "build-local.sh: built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
