#!/bin/sh
# Start Mosquitto once the auth files exist, and SIGHUP it whenever mqtt_auth_sync rewrites them.
set -eu
while [ ! -s /mosquitto/auth/passwd ] || [ ! -s /mosquitto/auth/acl ]; do
  echo "waiting for /mosquitto/auth/{passwd,acl} from mqtt-auth"; sleep 1
done
mosquitto -c /mosquitto/config/mosquitto.conf &
pid=$!
stamp=$(cat /mosquitto/auth/passwd /mosquitto/auth/acl | md5sum)
while kill -0 "$pid" 2>/dev/null; do
  sleep 2
  now=$(cat /mosquitto/auth/passwd /mosquitto/auth/acl | md5sum)
  if [ "$now" != "$stamp" ]; then stamp=$now; kill -HUP "$pid"; fi
done
wait "$pid"
