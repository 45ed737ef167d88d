# realtimekit-exporter container image.
#
#   docker build -t realtimekit-exporter .
#   docker run --rm -p 9877:9877 -e CLOUDFLARE_API_TOKEN \
#     -v "$PWD/config.yaml:/etc/realtimekit-exporter/config.yaml:ro" realtimekit-exporter
#
# No config and no token are baked in: mount the config at /etc/realtimekit-exporter/config.yaml
# (or pass another --config.file) and give the token via CLOUDFLARE_API_TOKEN or api.token_file.
# For reproducible builds pin the base image by digest too (python:3.11-slim@sha256:…).

# Stage 1: build the wheel from the sources (nothing of this stage ends up in the image).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ ./exporter/
RUN pip wheel --no-deps --wheel-dir /dist .

# Stage 2: the runtime image, with only the installed wheel and its dependencies.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel is bind-mounted from the build stage, so it is not left behind in a layer.
RUN --mount=type=bind,from=build,source=/dist,target=/tmp/dist \
    pip install --no-cache-dir /tmp/dist/*.whl
# A fixed, unprivileged uid/gid (the "nonroot" id of distroless images); no home, no shell needed.
USER 65532:65532
EXPOSE 9877
# Liveness of the process; readiness (first poll cycle done) is at /-/ready.
# Set HEALTHCHECK_URL if you change --web.listen-address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:9877/-/healthy'), timeout=4)"]
ENTRYPOINT ["realtimekit-exporter"]
CMD ["--config.file=/etc/realtimekit-exporter/config.yaml"]
