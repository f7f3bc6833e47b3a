# resproxy as a sidecar container.
#   docker build -t resproxy .
#   docker run -v $PWD/config/docker.yml:/etc/resproxy/resproxy.yml:ro -p 22121:22121 -p 9121:9121 resproxy
# The config is read from /etc/resproxy/resproxy.yml (mount yours there); SIGHUP reloads it.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
# the C accelerators (proxy/_speedups.c, proxy/_inflight.c) are compiled here, into a wheel
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home resproxy \
    && mkdir -p /etc/resproxy
COPY config/docker.yml /etc/resproxy/resproxy.yml
USER resproxy
# 22121: the pool's listener; 9121: /metrics and /healthz (config/docker.yml)
EXPOSE 22121 9121
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9121/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["resproxy", "-c", "/etc/resproxy/resproxy.yml", "--log-format", "json"]
