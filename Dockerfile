# ca-service image. Not built in CI here (no Docker engine on these machines); kept simple so
# that it stays obviously right: the source tree is installed editable because the Alembic
# migrations are found beside the package.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/ca-service --create-home ca
WORKDIR /opt/ca-service
COPY pyproject.toml README.md ./
COPY ca_service ca_service
COPY migrations migrations
COPY config config
RUN pip install --no-cache-dir -e .
USER ca
ENV CA_DATA_DIR=/var/lib/ca-service CA_BIND=0.0.0.0:8000
EXPOSE 8000
CMD ["ca-service", "serve"]
