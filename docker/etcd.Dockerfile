# etcd for docker/compose.cluster.yaml: Debian bookworm's `etcd-server` package
# (etcd 3.4, the release kvstore's etcd engine is tested against), run as the
# non-root user 10002 with its data in the volume /var/lib/etcd.
#
#   docker build -f docker/etcd.Dockerfile -t kvstore-etcd docker/
#
# Without a registry, `docker/build-local.sh --etcd` builds it from a base image
# made locally that holds the package's etcd already (BASE_IMAGE, with an empty
# /out/data), so nothing is installed here.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS install
RUN set -e; \
    if [ ! -x /usr/bin/etcd ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends etcd-server; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    [ -d /out/data ] || mkdir -p /out/data

FROM install
# The data folder, owned by etcd's user: a new named volume mounted on it starts
# with that owner.
COPY --from=install --chown=10002:10002 /out/data /var/lib/etcd
USER 10002:10002
ENV ETCD_DATA_DIR=/var/lib/etcd
VOLUME /var/lib/etcd
EXPOSE 2379 2380
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/etcd"]
