# A stand-in for postgres:16.6-bookworm where no container registry is reachable (make
# test-stack substitutes it then): Debian bookworm's PostgreSQL 15 on the local base
# (docker/base.sh), with the official image's variables (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB), data path and healthcheck command (pg_isready), so docker-compose.yml is unchanged.
ARG BASE_IMAGE=modelplane/bookworm:12
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql/15 \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
