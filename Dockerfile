# ca-service image. Not built in CI here (no Docker engine on these machines; tests/topology checks
# this file and docker-compose.yml instead); kept simple so that it stays obviously right: a plain
# (non-editable) install, as a user would make it. The migrations and the gunicorn settings ship
# inside the package, so no source tree is kept.
FROM python:3.11-slim
# A fixed UID, so that secret files on the host can be given to it (docker-compose.yml).
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home /var/lib/ca-service --create-home ca \
    && chmod 700 /var/lib/ca-service
COPY pyproject.toml README.md /tmp/ca-service/
COPY ca_service /tmp/ca-service/ca_service
RUN pip install --no-cache-dir /tmp/ca-service && rm -rf /tmp/ca-service
USER 10001:10001
WORKDIR /var/lib/ca-service
ENV CA_DATA_DIR=/var/lib/ca-service CA_BIND=0.0.0.0:8000
EXPOSE 8000
CMD ["ca-service", "serve"]
