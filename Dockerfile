# One image for every node's web, worker and migrate containers (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The project and its dependencies (granian, the web server, is one of them).
COPY . /app
RUN pip install .

# Never run the node as root.
RUN groupadd --system --gid 10001 configstore \
    && useradd --system --uid 10001 --gid configstore --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin configstore \
    && mkdir -p /app/data \
    && chown -R configstore:configstore /app/data
USER configstore

EXPOSE 8000
CMD ["granian", "--interface", "asgi", "--host", "0.0.0.0", "--port", "8000", "configstore.asgi:application"]
