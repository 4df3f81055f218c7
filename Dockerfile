# Container image of the flow (k8s/ runs `plantpulse run` from it). Not built on the development machines,
# which have no Docker engine.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY plantpulse ./plantpulse
COPY flows ./flows
COPY connectors ./connectors
COPY models ./models
COPY sim ./sim
COPY grafana ./grafana
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home plantpulse
USER 10001
ENV DATA_DIR=/var/lib/plantpulse
EXPOSE 2101 9464
ENTRYPOINT []
CMD ["plantpulse", "run"]
