# Offline stand-in for prom/prometheus (no image registry here): Debian bookworm's own
# Prometheus (2.42) on the locally bootstrapped base, laid out like the official image
# (entrypoint /usr/bin/prometheus, data in /prometheus, user nobody, wget for the compose
# healthcheck). Built by tests/docker/conftest.py; used by compose.offline.yml.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
