"""The Alembic migrations: the only source of the schema. A package so that they install with
ca-service (``ca-service db upgrade`` finds them through ``importlib.resources``)."""
