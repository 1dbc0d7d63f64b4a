# upseal's container image: both daemons and upseal-certs, on nothing.
#
#   docker build -t upseal .                          # ENTRYPOINT upseal-server
#   docker build -t upseal-client --build-arg ROLE=client .
#   docker build -t upseal:trixie --build-arg DEBIAN=13 .   # mbedTLS 3.6, TLS 1.3
#
#   docker run -v /etc/upseal:/etc/upseal:ro -p 7443:7443 upseal
#   docker run --entrypoint /usr/sbin/upseal-client -v ...:/etc/upseal:ro upseal \
#       -c /etc/upseal/client.ini
#
# The runtime image is `FROM scratch`: the three binaries, exactly the
# shared libraries they load (as ldd lists them, with the dynamic loader),
# an /etc/passwd and /etc/group naming the user `upseal` (uid/gid 10001),
# and an nsswitch.conf. No shell, no package manager, no other program.
#
# The configuration and the identities are mounted at /etc/upseal,
# read-only (default file /etc/upseal/upseal.ini); the root filesystem can
# be read-only too. Keys must be readable by uid 10001: owner 10001 with
# mode 0600 or 0400, or owner root, group 10001, mode 0640 or 0440 (a key
# that others can read is refused). docker kill -s HUP reloads; docker stop
# drains (drain_timeout, default 15s: keep `docker stop -t` above it).
# Health checks: GET /healthz on the `status` port, from outside the
# container (there is no curl, nor a shell, inside).
# tests/containers.sh builds this file with podman and runs all of the above.

# Debian release of the build stage: 12 (mbedTLS 2.28, TLS 1.2) or 13
# (mbedTLS 3.6, TLS 1.3). The runtime stage takes its libraries from it.
ARG DEBIAN=12

# ---- build ------------------------------------------------------------------
FROM debian:${DEBIAN} AS build
ARG DEBIAN
RUN case "$DEBIAN" in 12|13) ;; \
        *) echo "DEBIAN must be 12 or 13, not '$DEBIAN'" >&2; exit 1;; esac \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev make libmbedtls-dev libuv1-dev libinih-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" install DESTDIR=/out PREFIX=/usr \
 && /out/usr/sbin/upseal-server --version \
 && /out/usr/sbin/upseal-client --version

# The runtime tree, /rootfs: the binaries from /out, each shared object they
# load at the path ldd names (the loader's too), the user, the entrypoint's
# link; then each binary runs from it with nothing else (chroot).
ARG ROLE=server
RUN set -eu; \
    case "$ROLE" in client|server) ;; \
        *) echo "ROLE must be client or server, not '$ROLE'" >&2; exit 1;; esac; \
    bins="/out/usr/sbin/upseal-client /out/usr/sbin/upseal-server /out/usr/bin/upseal-certs"; \
    mkdir -p /rootfs/etc/upseal /rootfs/usr/local/bin /rootfs/usr/sbin /rootfs/usr/bin; \
    cp /out/usr/sbin/upseal-client /out/usr/sbin/upseal-server /rootfs/usr/sbin/; \
    cp /out/usr/bin/upseal-certs /rootfs/usr/bin/; \
    for f in $(ldd $bins | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do \
        cp --parents -L "$f" /rootfs/; \
    done; \
    printf 'root:x:0:0:root:/nonexistent:/nonexistent\nupseal:x:10001:10001:upseal:/nonexistent:/nonexistent\n' \
        > /rootfs/etc/passwd; \
    printf 'root:x:0:\nupseal:x:10001:\n' > /rootfs/etc/group; \
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' > /rootfs/etc/nsswitch.conf; \
    ln -s "/usr/sbin/upseal-$ROLE" /rootfs/usr/local/bin/upseal; \
    for b in /usr/local/bin/upseal /usr/sbin/upseal-client /usr/bin/upseal-certs; do \
        chroot /rootfs "$b" --version; \
    done; \
    find /rootfs -type f -exec ls -l {} +

# ---- runtime ----------------------------------------------------------------
FROM scratch
COPY --from=build /rootfs/ /
USER 10001:10001
WORKDIR /etc/upseal
# upseal-server's usual TLS port (examples/server.ini); status if enabled.
EXPOSE 7443 9180
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/upseal"]
CMD ["-c", "/etc/upseal/upseal.ini"]
