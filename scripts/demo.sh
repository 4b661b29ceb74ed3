#!/usr/bin/env bash
# The main job: the embedded broker, synthetic clicks (a few bad ones) and the fault-tolerant
# pipeline with live output. Ctrl+C stops everything cleanly; run it again to resume from the
# last checkpoint. Run from the project root with the runner on PATH (make demo does both).
set -euo pipefail
PORT=${DEMO_PORT:-9092}
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
  echo "DEMO_PORT=$PORT is not a TCP port (1-65535)" >&2
  exit 2
fi
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$PORT
PIPELINE=pipelines/fault_tolerant.yaml
broker="" clicks="" pipeline=""

stop() {  # TERM a process and wait for it, if it still runs
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  # the runner first (it checkpoints and delivers), then the clicks, then the broker
  stop "$pipeline"; stop "$clicks"; stop "$broker"
  if [ -n "$pipeline" ] && [ -e state_store/fault_tolerant/data.mdb ]; then
    echo "demo stopped; 'make demo' again resumes from the checkpoint in state_store/fault_tolerant"
  else
    echo "demo stopped"
  fi
}
on_interrupt() {
  # Ctrl+C in a terminal reached the runner as well: let it finish its clean stop before
  # anyone signals it again (a second signal means "stop now, without a checkpoint")
  for _ in $(seq 1 100); do
    { [ -n "$pipeline" ] && kill -0 "$pipeline" 2>/dev/null; } || break
    sleep 0.1
  done
  exit 0
}
trap cleanup EXIT
trap on_interrupt INT TERM

if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
  if ! python -c "import sys; from plugins import kafka_common as kc; kc.consumer(sys.argv[1], {}, 'runner-demo-probe').close()" \
    "127.0.0.1:$PORT" 2>/dev/null; then
    echo "127.0.0.1:$PORT is taken by something that is not a Kafka broker: free it, or run the demo on" \
         "another free port (DEMO_PORT=PORT make demo)" >&2
    exit 1
  fi
  echo "using the Kafka broker already listening on 127.0.0.1:$PORT (its topics get the demo's clicks)"
else
  # in a session of its own: Ctrl+C must not take the broker away before the runner's last checkpoint
  setsid runner broker --port "$PORT" & broker=$!
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.2; done
  sleep 1  # the broker creates its topics right after it starts listening
fi

if [ ! -e state_store/fault_tolerant ]; then
  # First run: half an hour of past clicks at once, so windows and sessions close right away.
  runner generate --count 18000 --rate 0 --bad-ratio 0.02 --seed 1 --users 500 \
    --start "$(date -u -d '-30 min' +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
fi
# Then live clicks, 20 a second, 2% of them bad.
runner generate --rate 20 --bad-ratio 0.02 --users 500 >/dev/null 2>&1 & clicks=$!

runner run "$PIPELINE" & pipeline=$!
wait "$pipeline"
