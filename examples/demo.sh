#!/usr/bin/env bash
# The main job on the embedded default: a manager on SQLite, one delegate, and a task that
# uses a secret, with its live log masked. Everything lives in ./.demo and is stopped at
# the end (a second run starts from the same data dir, reusing its CA and keys).
set -euo pipefail

DEMO_DIR=${DEMO_DIR:-.demo}
PORT=${DEMO_PORT:-18443}
mkdir -p "$DEMO_DIR"
DATA="$DEMO_DIR/manager"
URL="https://127.0.0.1:$PORT"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Starting tether-manager on $URL (data in $DATA)"
# A run before this one left its "listening" line: gone first, or it would be read as this
# manager's before the new process truncates the file.
rm -f "$DEMO_DIR/manager.out"
tether-manager serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --log-format json \
  >"$DEMO_DIR/manager.out" 2>"$DEMO_DIR/manager.log" &
pids+=($!)
for _ in $(seq 1 600); do
  grep -q "listening on" "$DEMO_DIR/manager.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DEMO_DIR/manager.log"; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$DEMO_DIR/manager.out" 2>/dev/null || {
  echo "the manager did not start within 60 s; its log:" >&2
  cat "$DEMO_DIR/manager.log" >&2
  exit 1
}
cat "$DEMO_DIR/manager.out"

export TETHER_MANAGER_URL="$URL"
export TETHER_CA_FILE="$DATA/tls/ca.pem"
TETHER_API_KEY=$(cat "$DATA/admin-api-key")
export TETHER_API_KEY

say "Enrolling a delegate: tether token create demo-delegate"
# A run before this one left its token and its delegate: both go, or the new token's
# delegate is refused the name (409) and the demo waits for it in vain. --force: that run
# stopped its delegate, but a manager started moments later still counts it as live for
# lost_after.
tether token revoke demo-delegate >/dev/null 2>&1 || true
tether delegate delete --force demo-delegate >/dev/null 2>&1 || true
TOKEN=$(tether token create demo-delegate | tail -n 1)
echo "token created (shown once; kept only as a hash on the manager)"

say "Starting tether-delegate (outbound only: it opens no port)"
(umask 077 && printf '%s\n' "$TOKEN" > "$DEMO_DIR/delegate-token")
# --shared-user: the demo makes no task users, so its tasks run as you; see "Task users" in
# docs/operations.md for a delegate whose tasks run apart from it.
tether-delegate run --name demo-delegate --selector demo --token-file "$DEMO_DIR/delegate-token" \
  --shared-user --data-dir "$DEMO_DIR/delegate" --log-format json 2>"$DEMO_DIR/delegate.log" &
pids+=($!)
for _ in $(seq 1 100); do
  tether delegate list 2>/dev/null | grep -q "demo-delegate.*connected" && break
  sleep 0.1
done
tether delegate list

say "Storing a secret: tether secret create db-password --from-literal - (value from stdin)"
# Encrypted at once under a fresh data key, wrapped by the manager's builtin key; the API
# never returns it. A second run of the demo gives it a new version instead.
if tether secret get db-password >/dev/null 2>&1; then
  printf %s correct-horse-battery-staple | tether secret update db-password --from-literal -
else
  printf %s correct-horse-battery-staple | tether secret create db-password --from-literal -
fi
tether secret versions db-password

say "Running a deployment task that uses it (watch the password get masked)"
cat <<'SCRIPT'
  tether task run --selector demo --env DB_PASSWORD='${secrets.getValue("db-password")}' -- bash -c '...'
SCRIPT
set +e
tether task run --selector demo \
  --env DB_PASSWORD='${secrets.getValue("db-password")}' \
  --deploy-service checkout --deploy-env staging --deploy-version 1.4.2 \
  -- bash -c '
    echo "connecting to db as deploy:$DB_PASSWORD"
    echo "base64 of it: $(printf %s "$DB_PASSWORD" | base64)"
    for step in migrate build rollout; do echo "step: $step"; sleep 0.4; done
    echo "VERSION=1.4.2" >> "$TETHER_OUTPUT"
    echo "done"'
code=$?
set -e
echo "tether task run exited with $code"

say "The stored log, read back through the API"
TASK_ID=$(tether task list --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tasks"][0]["id"])')
tether task logs "$TASK_ID"
tether task get "$TASK_ID"

say "Stopping the delegate and the manager"
