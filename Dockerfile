# canarywatch: one image for worker, actuator, bridge and simulator (`canarywatch <command>`).
# The request-log line scanner (linescan/) is Rust: built into a wheel in its own stage.
FROM rust:1.95-slim AS linescan
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv \
    && python3 -m venv /build && /build/bin/pip install --no-cache-dir maturin==1.16.0
COPY linescan /src/linescan
RUN /build/bin/maturin build --release --compatibility linux --manifest-path /src/linescan/Cargo.toml \
    --out /wheels

FROM python:3.11-slim
WORKDIR /app
COPY --from=linescan /wheels /wheels
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
RUN pip install --no-cache-dir /wheels/*.whl . && useradd --uid 10001 canarywatch
USER 10001
ENV CANARYWATCH_DATA_DIR=/tmp/canarywatch
EXPOSE 9108
ENTRYPOINT ["canarywatch"]
CMD ["worker"]
