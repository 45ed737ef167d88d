# realtimekit-exporter container image.
#
#   docker build -t realtimekit-exporter .        # BuildKit or Debian's legacy builder
#   docker run --rm -p 9877:9877 -e CLOUDFLARE_API_TOKEN \
#     -v "$PWD/config.yaml:/etc/realtimekit-exporter/config.yaml:ro" realtimekit-exporter [FLAGS]
#
# No config and no token are baked in: mount the config (readable by uid 65532) at
# /etc/realtimekit-exporter/config.yaml (or pass another --config.file) and give the token via
# CLOUDFLARE_API_TOKEN or api.token_file. FLAGS are appended to the entrypoint's.
# The dependencies are pinned by constraints.txt (regenerate it with .ci/update-constraints), the
# ha extra (Redis coordination) included. For reproducible builds pin the base image by digest
# too (python:3.11-slim@sha256:…). Tag the image with the package's version, as the manifests
# under deploy/ expect: docker build -t realtimekit-exporter:0.1.0 .

# Stage 1: build the wheel from the sources (nothing of this stage ends up in the image).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ ./exporter/
RUN pip wheel --no-deps --wheel-dir /dist .
COPY constraints.txt /dist/

# Stage 2: the runtime image, with only the installed wheel and its dependencies.
# Plain Dockerfile syntax only (no RUN --mount, no heredocs): Debian's docker.io legacy builder
# builds it as well as BuildKit does. The wheel copied in (under 200 KiB) stays in its layer.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="realtimekit-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Cloudflare RealtimeKit meetings" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/realtimekit-exporter/realtimekit-exporter"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/ /tmp/dist/
# The wheel with the ha extra, every dependency at the version constraints.txt pins (the wheel
# carries the LICENSE into site-packages).
RUN wheel="$(echo /tmp/dist/realtimekit_exporter-*.whl)" \
    && pip install --no-cache-dir --constraint /tmp/dist/constraints.txt "${wheel}[ha]" \
    && rm -rf /tmp/dist
# A fixed, unprivileged uid/gid (the "nonroot" id of distroless images); no home, no shell needed.
# A mounted config must be readable by this uid.
USER 65532:65532
EXPOSE 9877
# Liveness of the process; readiness (first poll cycle done) is at /-/ready. The check reads the
# exporter's --web.listen-address and --web.config.file from PID 1's command line, so it follows
# them; it prints one line and exits 1 when the exporter does not answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "exporter.healthcheck"]
# The config path is part of the entrypoint, so `docker run IMAGE --some.flag` keeps it; a later
# --config.file on the command line overrides it.
ENTRYPOINT ["realtimekit-exporter", "--config.file", "/etc/realtimekit-exporter/config.yaml"]
CMD []
