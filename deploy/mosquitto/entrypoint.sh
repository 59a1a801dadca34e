#!/bin/sh
# Start Mosquitto once the auth files and the TLS certificate exist, and SIGHUP it whenever
# mqtt_auth_sync rewrites the auth files.
set -eu
for cert in /mosquitto/certs/server.crt /mosquitto/certs/server.key; do
  if [ ! -s "$cert" ]; then
    echo "missing $cert: mount the MQTT TLS certificate and key (MQTT_TLS_DIR, see docs/security.md)" >&2
    exit 1
  fi
done
auth="/mosquitto/auth/passwd-control /mosquitto/auth/passwd-devices /mosquitto/auth/acl"
for file in $auth; do
  while [ ! -s "$file" ]; do
    echo "waiting for $file from mqtt-auth"; sleep 1
  done
done
mosquitto -c /mosquitto/config/mosquitto.conf &
pid=$!
# shellcheck disable=SC2086  # $auth is a list of paths without spaces
stamp=$(cat $auth | md5sum)
while kill -0 "$pid" 2>/dev/null; do
  sleep 2
  # shellcheck disable=SC2086
  now=$(cat $auth | md5sum)
  if [ "$now" != "$stamp" ]; then stamp=$now; kill -HUP "$pid"; fi
done
wait "$pid"
