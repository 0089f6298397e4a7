# banditgate: one image for every command (serve, router, ingest, control, workers, backends).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BANDITGATE_DATA_DIR=/var/lib/banditgate

RUN useradd --create-home --uid 10001 banditgate \
    && mkdir -p /var/lib/banditgate && chown banditgate /var/lib/banditgate

WORKDIR /app
# The pinned versions first: this layer is rebuilt only when they change.
COPY constraints.txt ./
COPY pyproject.toml README.md ./
COPY banditgate ./banditgate
COPY banditgate_app ./banditgate_app
COPY router ./router
COPY reward_ingest ./reward_ingest
COPY trainer ./trainer
COPY experiments ./experiments
COPY monitor ./monitor
COPY examples ./examples
RUN pip install -c constraints.txt '.[s3]'

USER banditgate
EXPOSE 8080
# Probes the command the container runs: /health/ready of serve, router, ingest and control
# (on their --port), `banditgate workers --check` for workers and trainer, /ping of backends.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "banditgate_app.healthcheck"]
ENTRYPOINT ["banditgate"]
CMD ["serve", "-f", "/app/examples/reviews.yaml", "--host", "0.0.0.0", "--port", "8080"]
