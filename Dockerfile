# The Fogdeck control plane image: web (ASGI), Celery worker and beat, the MQTT bridge and auth sync.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 FOGDECK_DATA_DIR=/var/lib/fogdeck
WORKDIR /app
COPY pyproject.toml README.md ./
COPY . .
RUN pip install --no-cache-dir . \
 && mkdir -p /var/lib/fogdeck \
 && DEBUG=true python manage.py collectstatic --noinput --verbosity 0
RUN useradd --system --uid 10001 fogdeck && chown -R fogdeck /var/lib/fogdeck \
 && mkdir -p /mosquitto/auth && chown 1883:1883 /mosquitto/auth
USER fogdeck
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
