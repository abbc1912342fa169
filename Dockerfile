# Multi-stage: build the wheel (with the compiled core), ship a slim runtime image.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .
# With the NATS client (the `edges` extra): EVENT_BUS and `time-masternode edge`.
RUN pip wheel --wheel-dir /wheels "$(ls /wheels/timefast-*.whl)[edges]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --from=build /src/deploy/healthcheck.py /usr/local/bin/time-masternode-healthcheck
# The data directory is made here, owned by the node's user: Docker fills a new named
# volume from the image's mount point (owner, mode, contents), so without it the
# volume would be root's and the node could not write its key.
RUN useradd --system --create-home --home-dir /var/lib/timecoin timecoin \
    && install -d -o timecoin -g timecoin -m 0700 /var/lib/timecoin/data
USER timecoin
ENV WS_ADDR=0.0.0.0:8765 DATA_DIR=/var/lib/timecoin/data
VOLUME /var/lib/timecoin/data
EXPOSE 8765
# The check reads WS_ADDR (and TLS_CERT) as the node does, so `-e WS_ADDR=...` moves it too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["time-masternode-healthcheck"]
CMD ["time-masternode"]
