# A stand-in for prom/prometheus:v2.55.1 where no container registry is reachable (make
# test-stack substitutes it then): Debian bookworm's Prometheus on the local base
# (docker/base.sh), with the official image's entrypoint, user (nobody), working directory and
# data volume (/prometheus), so docker-compose.yml's command and mounts are unchanged.
ARG BASE_IMAGE=modelplane/bookworm:12
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
# the official image's data path (Debian's default is /var/lib/prometheus/metrics2)
ENTRYPOINT ["/usr/bin/prometheus", "--storage.tsdb.path=/prometheus/data"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]
