# upseal in a container: one image with both sidecars and upseal-certs.
#
#   docker build -t upseal .                       # ENTRYPOINT upseal-server
#   docker build -t upseal-client --build-arg ROLE=client .
#
#   docker run -v /etc/upseal:/etc/upseal:ro -p 7443:7443 upseal
#   docker run --entrypoint upseal-client -v ...:/etc/upseal:ro upseal \
#       -c /etc/upseal/client.ini
#
# The configuration and the identities are mounted at /etc/upseal (read-only
# is fine; default file /etc/upseal/upseal.ini). Keys must be readable by
# the image's user `upseal` (uid/gid 10001): owner 10001, mode 0600 (a key
# that group or others can read is refused; root-owned 0640 is allowed). docker kill -s HUP reloads; docker stop drains (drain_timeout,
# default 15s: keep `docker stop -t` above it). The runtime image has no
# curl: probe the `status` port from outside (see examples/k8s).

# ---- build ------------------------------------------------------------------
FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential make pkg-config libmbedtls-dev libuv1-dev libinih-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" \
 && make install DESTDIR=/out PREFIX=/usr \
 && /out/usr/sbin/upseal-server --version \
 && /out/usr/sbin/upseal-client --version

# ---- runtime ----------------------------------------------------------------
FROM debian:12-slim
# Debian 12's runtime packages for mbedTLS 2.28, libuv 1.44 and inih.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libmbedtls14 libmbedcrypto7 libmbedx509-1 libuv1 libinih1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 upseal \
 && useradd --system --uid 10001 --gid upseal --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin upseal \
 && install -d -m 0755 /etc/upseal
COPY --from=build /out/usr/sbin/upseal-client /out/usr/sbin/upseal-server /usr/sbin/
COPY --from=build /out/usr/bin/upseal-certs /usr/bin/
COPY --from=build /out/usr/share/doc/upseal/examples /usr/share/doc/upseal/examples

ARG ROLE=server
RUN ln -s /usr/sbin/upseal-${ROLE} /usr/local/bin/upseal \
 && /usr/local/bin/upseal --version
USER upseal:upseal
WORKDIR /etc/upseal
VOLUME ["/etc/upseal"]
# upseal-server's usual TLS port (examples/server.ini); status if enabled.
EXPOSE 7443 9180
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/upseal"]
CMD ["-c", "/etc/upseal/upseal.ini"]
