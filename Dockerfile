# The facilitator image. Build: docker build -t x402-facilitator .
# Configure it with environment variables (X402_*, DATABASE_URL) or a mounted TOML file
# (X402_CONFIG_FILE); see deploy/facilitator.example.toml. Give it a DATABASE_URL: without one it would
# start an embedded PostgreSQL inside the container and lose the ledger with the container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: node_modules, .venv and the dev data stay out of the image.
COPY pyproject.toml ./
COPY shared ./shared
COPY facilitator ./facilitator
COPY resource_server ./resource_server
COPY client ./client
COPY devstack ./devstack
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin x402

USER x402
EXPOSE 4020
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4020/health', timeout=2)"]
CMD ["x402-facilitator", "--host", "0.0.0.0"]
