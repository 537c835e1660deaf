# canarywatch: one image for worker, actuator, bridge and simulator (`canarywatch <command>`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
RUN pip install --no-cache-dir . && useradd --uid 10001 canarywatch
USER 10001
ENV CANARYWATCH_DATA_DIR=/tmp/canarywatch
EXPOSE 9108
ENTRYPOINT ["canarywatch"]
CMD ["worker"]
