# banditgate: one image for every component (serve, router, ingest, trainer, control).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BANDITGATE_DATA_DIR=/var/lib/banditgate

RUN useradd --create-home --uid 10001 banditgate \
    && mkdir -p /var/lib/banditgate && chown banditgate /var/lib/banditgate

WORKDIR /app
COPY pyproject.toml README.md ./
COPY banditgate ./banditgate
COPY router ./router
COPY reward_ingest ./reward_ingest
COPY trainer ./trainer
COPY experiments ./experiments
COPY examples ./examples
RUN pip install .

USER banditgate
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["banditgate"]
CMD ["serve", "-f", "/app/examples/reviews.yaml", "--host", "0.0.0.0", "--port", "8080"]
