# Multi-stage: build the wheel (with the compiled core), ship a slim runtime image.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .
RUN pip wheel --wheel-dir /wheels /wheels/timefast-*.whl

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --system --create-home --home-dir /var/lib/timecoin timecoin
USER timecoin
ENV WS_ADDR=0.0.0.0:8765 DATA_DIR=/var/lib/timecoin/data
VOLUME /var/lib/timecoin/data
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"
CMD ["time-masternode"]
