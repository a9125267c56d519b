#!/usr/bin/env bash
# Runs the functions that `sam build` produced the way Lambda would, without Docker: the
# docker-free equivalent of `sam local invoke` with every sample event in events/.
#
#   1. a moto server (DynamoDB, SQS) with the table and queues (`qo setup`), and the
#      quota-enforcing API simulator (`qo sim`) as the worker's API;
#   2. `cargo lambda watch --only-lambda-apis`: cargo-lambda's emulator of the Lambda Runtime
#      API and Invoke API, which runs no function itself;
#   3. a small proxy in front of it that sets each invocation's deadline to now + the
#      function's timeout, as Lambda does (cargo-lambda 1.9.2 always sends
#      `Lambda-Runtime-Deadline-Ms: 600000`, i.e. 1970-01-01T00:10:00Z, so every invocation
#      would look expired), and logs when each job event is invoked and handed out;
#   4. the built bootstraps (aarch64; where .aws-sam/build/template.yaml puts them) under qemu user-mode
#      emulation (`qemu-aarch64` with the aarch64 glibc of libc6-arm64-cross), each with the
#      Lambda variables and a clean environment: one orchestrator and a pool of worker
#      instances (QO_EMULATOR_WORKERS, 8), warmed up with one health check each;
#   5. `cargo lambda invoke` with each events/*.json (control-* and scheduled* to the
#      orchestrator, worker-* to the worker), checking each answer;
#   6. the jobs of events/jobs.jsonl, then a single job, sent to the emptied job queue:
#      scheduled runs dispatch them to the worker through the Invoke API, and the worker calls
#      the simulator. Every job must end called once, with no queue left holding anything and
#      no call refused by the quota.
#
# One line per event with its outcome; exits non-zero on the first failure, with the tail of
# the logs. Every process it starts is stopped on exit.
#
# Usage: bash tests/emulator.sh [--keep-logs]
#   --keep-logs  keep the directory with the logs of every process (printed at the end; kept
#                on failure too when CI is set)
# Needs: `bash tests/setup.sh` (the venv with moto and cargo-lambda; qemu-user and
# libc6-arm64-cross), the build of `bash tests/sam.sh`, and cargo (to build `qo`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${QO_VENV:-$REPO/.venv}"
PY="$VENV/bin/python3"
CARGO_LAMBDA="$VENV/bin/cargo-lambda"
QEMU="${QO_QEMU:-qemu-aarch64}"
AARCH64_SYSROOT="${QO_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"

# The functions' timeouts here (seconds): the deadline each invocation gets. The orchestrator's
# is short, just above what its start-up check needs (one SDK call + its stop margin, the
# worst-case finish: 24 s + 344 s with the default SDK settings), so that a run that does not
# stop when idle shows as `deadline` after 56 s of dispatch; the worker's is the template's
# default.
ORCHESTRATOR_TIMEOUT_S=400
WORKER_TIMEOUT_S=150
# Worker instances polling at once (QO_EMULATOR_WORKERS). Lambda starts as many as the events
# in flight need; here the pool is fixed, and cargo-lambda's emulator hands each event to
# whichever instance asks first. At 20 calls/s an event holds an instance for the dispatch
# lead (250 ms) plus the call and its writes, slow under qemu: with too few instances events
# wait in the emulator and reach the worker after their slot. About 50 MB each.
WORKER_INSTANCES="${QO_EMULATOR_WORKERS:-8}"
# The quota of the simulated API and the one the run paces to (events/control-set-quota.json
# sets 20/s,1000/min).
SIM_QUOTA="20/s"
# The longest one invoke may take before it counts as hung.
INVOKE_TIMEOUT_S=$((ORCHESTRATOR_TIMEOUT_S + 30))

KEEP_LOGS=0
for arg in "$@"; do
  case "$arg" in
    --keep-logs) KEEP_LOGS=1 ;;
    -h | --help)
      sed -n '2,31p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "emulator.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf 'emulator: %s\n' "$*"; }
die() {
  printf 'emulator: ERROR: %s\n' "$*" >&2
  exit 1
}

start=$SECONDS
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/qo-emulator.XXXXXX")"
PIDS=()
FAILED_LOGS=()

# Stops every process group this script started (SIGTERM, then SIGKILL after 5 s), prints the
# tails of the logs on failure, and removes the log directory unless asked to keep it.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  local waited=0
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [[ $waited -lt 50 ]]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    local f
    # moto's log is only its access log: shown when it failed to start.
    for f in "${FAILED_LOGS[@]:-}" "$LOGS"/lambda-*.log "$LOGS"/sim.log "$LOGS"/orchestrator.log \
      "$LOGS"/worker-*.log; do
      [[ -n "$f" && -s "$f" ]] || continue
      printf '\n--- last lines of %s ---\n' "${f##*/}" >&2
      tail -n 20 "$f" >&2
    done
  fi
  if [[ $KEEP_LOGS == 1 || $rc -ne 0 && -n "${CI:-}" ]]; then
    say "logs kept in $LOGS"
  else
    rm -rf "$LOGS"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in its own session (so that cleanup can stop it with its children), output in
# $LOGS/$1.log; sets STARTED_PID.
spawn() {
  local name="$1"
  shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port NAME PID PORT SECONDS: until 127.0.0.1:PORT accepts connections; fails when the
# process exits first (returns 2: the caller may retry on another port) or the time is up.
wait_port() {
  local name="$1" pid="$2" port="$3" limit="$4" t0=$SECONDS
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 2
    if [[ $((SECONDS - t0)) -ge $limit ]]; then
      FAILED_LOGS+=("$LOGS/$name.log")
      die "$name: not listening on port $port after $limit s (log: $LOGS/$name.log)"
    fi
    sleep 0.1
  done
}

# start_service NAME SECONDS COMMAND...: COMMAND may use the word @PORT, replaced by a free
# port; tried on three ports (another process may take a port between its choice and the
# bind). Sets SERVICE_PORT.
start_service() {
  local name="$1" limit="$2"
  shift 2
  local attempt port args a
  for attempt in 1 2 3; do
    port="$(free_port)"
    args=()
    for a in "$@"; do args+=("${a//@PORT/$port}"); done
    spawn "$name" "${args[@]}"
    if wait_port "$name" "$STARTED_PID" "$port" "$limit"; then
      SERVICE_PORT="$port"
      return 0
    fi
    cp "$LOGS/$name.log" "$LOGS/$name.attempt$attempt.log" 2>/dev/null || true
    say "$name exited at start (attempt $attempt, port $port)"
  done
  FAILED_LOGS+=("$LOGS/$name.log")
  die "$name: could not start (log: $LOGS/$name.log)"
}

# --- 1. tools and artifacts ---------------------------------------------------------------

for exe in "$PY" "$CARGO_LAMBDA" "$VENV/bin/moto_server"; do
  [[ -x "$exe" ]] || die "$exe is missing: run bash tests/setup.sh"
done
command -v "$QEMU" >/dev/null ||
  die "$QEMU not found: install qemu-user (bash tests/setup.sh does, as root on Debian)"
[[ -e "$AARCH64_SYSROOT/lib/ld-linux-aarch64.so.1" ]] ||
  die "$AARCH64_SYSROOT/lib/ld-linux-aarch64.so.1 not found: install libc6-arm64-cross (bash tests/setup.sh does)"
command -v cargo >/dev/null || die "cargo not found on PATH"
command -v setsid >/dev/null || die "setsid (util-linux) not found on PATH"

# Each function's bootstrap is where the built template's CodeUri says: SAM builds functions
# alike (the pool's workers, one `worker` binary) once, into e.g. WorkerFunction-Shared.
built_dir() {
  [[ -f .aws-sam/build/template.yaml ]] ||
    die ".aws-sam/build/template.yaml is missing: run bash tests/sam.sh first (sam build)"
  "$PY" - "$1" <<'PYEOF'
import sys
from cfnlint.decode import decode
tpl, errors = decode(".aws-sam/build/template.yaml")
if errors:
    sys.exit(f"emulator: ERROR: .aws-sam/build/template.yaml: {errors}")
print(tpl["Resources"][sys.argv[1]]["Properties"]["CodeUri"])
PYEOF
}
orchestrator_dir="$(built_dir OrchestratorFunction)" || die "OrchestratorFunction is not in .aws-sam/build/template.yaml"
worker_dir="$(built_dir WorkerFunction)" || die "WorkerFunction is not in .aws-sam/build/template.yaml"
declare -A BOOTSTRAP=(
  [orchestrator]=".aws-sam/build/$orchestrator_dir/bootstrap"
  [worker]=".aws-sam/build/$worker_dir/bootstrap"
)
for fn in orchestrator worker; do
  f="${BOOTSTRAP[$fn]}"
  [[ -x "$f" ]] || die "$f is missing: run bash tests/sam.sh first (sam build)"
  read -r -a h <<<"$(od -An -tx1 -N20 -v "$f" | tr '\n' ' ')"
  [[ "${h[0]:-}${h[1]:-}${h[2]:-}${h[3]:-}" == 7f454c46 && "${h[18]:-}${h[19]:-}" == b700 ]] ||
    die "$f is not an aarch64 ELF executable: run bash tests/sam.sh"
  newer="$(find crates/*/src crates/*/Cargo.toml Cargo.toml Cargo.lock -newer "$f" -type f \
    \( -name '*.rs' -o -name '*.toml' -o -name Cargo.lock \) -print -quit 2>/dev/null || true)"
  if [[ -n "$newer" ]]; then
    say "WARNING: $f is older than $newer: it may not be the current code (bash tests/sam.sh rebuilds it)"
  fi
done
say "$("$CARGO_LAMBDA" lambda --version); $("$QEMU" --version | head -n1); aarch64 libraries from $AARCH64_SYSROOT"

# `qo` (setup, send, sim): built for this machine, by the same command as the test stage's
# build (`cargo test --workspace --all-features`, `qo`'s `aws` feature for `qo setup`), so
# after that stage this builds nothing. A plain
# `cargo build -p qo` selects other features (no dev-dependencies) and would compile every
# dependency a second time, gigabytes more under target/.
cargo test -q --workspace --all-features --no-run
QO="$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' \
  < <(cargo metadata -q --format-version 1 --no-deps))/debug/qo"
[[ -x "$QO" ]] || die "$QO was not built"

# --- 2. the local stack -------------------------------------------------------------------

start_service moto 60 "$VENV/bin/moto_server" -H 127.0.0.1 -p @PORT
MOTO="http://127.0.0.1:$SERVICE_PORT"

# The table and queues, and the variables naming them (AWS_ENDPOINT_URL, AWS_REGION,
# TABLE_NAME, QUEUE_URL, RETRY_QUEUE_URL, DLQ_URL).
declare -A STACK=()
setup_out="$(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  "$QO" setup --endpoint "$MOTO" --prefix qo-emulator)" || die "qo setup failed"
while IFS='=' read -r key value; do
  case "$key" in
    AWS_ENDPOINT_URL | AWS_REGION | TABLE_NAME | QUEUE_URL | RETRY_QUEUE_URL | DLQ_URL) STACK[$key]="$value" ;;
    "") ;;
    *) die "qo setup printed an unexpected line: $key=$value" ;;
  esac
done <<<"$setup_out"
for key in TABLE_NAME QUEUE_URL RETRY_QUEUE_URL DLQ_URL; do
  [[ -n "${STACK[$key]:-}" ]] || die "qo setup printed no $key"
done

start_service sim 30 "$QO" sim --quota "$SIM_QUOTA" --listen 127.0.0.1:@PORT --seconds 900
SIM="http://127.0.0.1:$SERVICE_PORT"

start_service lambda-emulator 60 "$CARGO_LAMBDA" lambda watch --only-lambda-apis --ignore-changes \
  --invoke-address 127.0.0.1 --invoke-port @PORT
LAMBDA_PORT="$SERVICE_PORT"

# The proxy: forwards everything to cargo-lambda's emulator, and on each event handed out
# (`.../runtime/invocation/next`) replaces the deadline with now + the function's timeout.
# Logs `poll FN` when an instance asks for an event, `event FN` when it gets one, and
# `invoke FN` for each Invoke API call (with, for a job, the time left until its slot).
cat >"$LOGS/lambda-proxy.py" <<'PY'
import http.client
import http.server
import json
import sys
import threading
import time

port, upstream = int(sys.argv[1]), int(sys.argv[2])
timeouts = {name: float(s) for name, s in (a.split("=", 1) for a in sys.argv[3:])}
SKIP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
LOG = threading.Lock()


def log(line):
    with LOG:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def slot_in(payload):
    """For a job event: the time left until its slot (`slot_at`, epoch microseconds)."""
    try:
        slot_ms = json.loads(payload).get("slot_at", 0) / 1000
    except (ValueError, TypeError, AttributeError):
        return ""
    return f" slot_in_ms={slot_ms - time.time() * 1000:.0f}" if slot_ms else ""


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else None

    def forward(self):
        # /.rt/FUNCTION/2018-06-01/runtime/invocation/next
        parts = self.path.split("/")
        fn = parts[2] if len(parts) > 3 and parts[1] == ".rt" else "_"
        is_next = self.path.endswith("/runtime/invocation/next")
        if is_next:
            log(f"poll {fn}")
        body = self.body()
        if "/functions/" in self.path and self.path.endswith("/invocations"):
            # An Invoke API call (the orchestrator invoking the worker).
            log(f"invoke {parts[3]} at={time.time():.3f}{slot_in(body)}")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in SKIP}
        conn = http.client.HTTPConnection("127.0.0.1", upstream)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in SKIP:
                continue
            if is_next and k.lower() == "lambda-runtime-deadline-ms" and fn in timeouts:
                v = str(int(time.time() * 1000 + timeouts[fn] * 1000))
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if is_next and resp.status == 200:
            log(f"event {fn} at={time.time():.3f}{slot_in(data)}")

    do_GET = do_POST = do_PUT = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Proxy)
server.daemon_threads = True
server.serve_forever()
PY
start_service lambda-proxy 30 "$PY" -u "$LOGS/lambda-proxy.py" @PORT "$LAMBDA_PORT" \
  "orchestrator=$ORCHESTRATOR_TIMEOUT_S" "worker=$WORKER_TIMEOUT_S"
PROXY_PORT="$SERVICE_PORT"

# --- 3. the functions under qemu ----------------------------------------------------------

# The environment of function $1 (its template variables plus what Lambda sets), and nothing
# else from this shell.
function_env() {
  local fn="$1" timeout="$2"
  FN_ENV=(
    PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TZ=:UTC
    "AWS_LAMBDA_FUNCTION_NAME=$fn" "AWS_LAMBDA_FUNCTION_VERSION=\$LATEST"
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128 "AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:$PROXY_PORT/.rt/$fn"
    "AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/$fn" AWS_LAMBDA_LOG_STREAM_NAME=emulator
    "AWS_REGION=${STACK[AWS_REGION]:-us-east-1}" "AWS_DEFAULT_REGION=${STACK[AWS_REGION]:-us-east-1}"
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
    "AWS_ENDPOINT_URL=$MOTO"
    "TABLE_NAME=${STACK[TABLE_NAME]}" "QUEUE_URL=${STACK[QUEUE_URL]}"
    "RETRY_QUEUE_URL=${STACK[RETRY_QUEUE_URL]}" "DLQ_URL=${STACK[DLQ_URL]}"
    STACK_NAME=quota-orchestrator-emulator "FUNCTION_TIMEOUT_S=$timeout"
  )
  case "$fn" in
    orchestrator)
      # The worker is invoked through cargo-lambda's Invoke API (by way of the proxy, which logs
      # each invoke), everything else goes to moto.
      FN_ENV+=(WORKER_FUNCTION_NAME=worker "AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:$PROXY_PORT"
        IDLE_EXIT_S=2)
      ;;
    worker) FN_ENV+=("API_BASE_URL=$SIM") ;;
  esac
}

declare -A FN_PIDS=()
# start_function FN TIMEOUT LOGNAME: one instance of FN's bootstrap under qemu.
start_function() {
  local fn="$1" timeout="$2" name="$3"
  function_env "$fn" "$timeout"
  spawn "$name" env -i "${FN_ENV[@]}" "$QEMU" -L "$AARCH64_SYSROOT" "${BOOTSTRAP[$fn]}"
  FN_PIDS[$name]="$STARTED_PID"
}

# Fails when an instance has exited (a function that stops is an error: Lambda would report
# Runtime.ExitError).
check_functions() {
  local name
  for name in "${!FN_PIDS[@]}"; do
    if ! kill -0 "${FN_PIDS[$name]}" 2>/dev/null; then
      FAILED_LOGS+=("$LOGS/$name.log")
      die "function instance $name exited (log: $LOGS/$name.log)"
    fi
  done
}

t_init=$SECONDS
start_function orchestrator "$ORCHESTRATOR_TIMEOUT_S" orchestrator
for i in $(seq 1 "$WORKER_INSTANCES"); do
  start_function worker "$WORKER_TIMEOUT_S" "worker-$i"
done
# Ready when every instance has asked for its first event (its init is done).
while true; do
  check_functions
  polls_o="$(grep -c '^poll orchestrator$' "$LOGS/lambda-proxy.log" || true)"
  polls_w="$(grep -c '^poll worker$' "$LOGS/lambda-proxy.log" || true)"
  [[ $polls_o -ge 1 && $polls_w -ge $WORKER_INSTANCES ]] && break
  [[ $((SECONDS - t_init)) -lt 60 ]] || die "the functions did not ask for an event within 60 s"
  sleep 0.1
done
say "orchestrator and $WORKER_INSTANCES worker instances (aarch64, qemu) initialised in $((SECONDS - t_init)) s"

# Warm-up: one health check per worker instance, all at once (each waiting instance takes one).
# An instance's first AWS SDK call is several times slower under qemu than on Lambda, enough
# for its first job to miss its slot; after this the jobs below meet warm instances.
t_warm=$SECONDS
warm_pids=()
for i in $(seq 1 "$WORKER_INSTANCES"); do
  timeout "$INVOKE_TIMEOUT_S" "$CARGO_LAMBDA" lambda invoke --invoke-address 127.0.0.1 \
    --invoke-port "$LAMBDA_PORT" --output-format json --data-file events/worker-health-check.json \
    worker >"$LOGS/warm-up-$i.json" 2>&1 &
  warm_pids+=($!)
done
for pid in "${warm_pids[@]}"; do
  wait "$pid" || die "warm-up: a health check failed (logs: $LOGS/warm-up-*.json)"
done
check_functions
warmed="$(grep -l 'health check passed' "$LOGS"/worker-*.log 2>/dev/null | wc -l)"
say "warm-up: $WORKER_INSTANCES health checks in $((SECONDS - t_warm)) s, $warmed of $WORKER_INSTANCES instances took one"

# --- 4. the sample events -----------------------------------------------------------------

# Checks one answer against what the event must produce; prints a one-line summary, or the
# reason and exit status 1.
cat >"$LOGS/check.py" <<'PY'
import json
import sys

event_path, fn, answer_path = sys.argv[1:4]
name = event_path.rsplit("/", 1)[-1]
event = json.load(open(event_path))
try:
    out = json.load(open(answer_path))
except ValueError as e:
    sys.exit(f"the answer is not JSON ({e}): {open(answer_path).read()[:500]!r}")


def need(cond, what):
    if not cond:
        sys.exit(f"expected {what}; got {json.dumps(out, sort_keys=True)[:500]}")


if fn == "orchestrator" and name.startswith("scheduled"):
    need(out.get("kind") == "run", "a run report (kind run)")
    reason = (out.get("stopped") or {}).get("reason")
    need(reason == "idle", "the run to stop when idle (IDLE_EXIT_S), before its deadline")
    need(out.get("invoke_failures") == 0, "no invoke failures")
    print(f"run stopped: {reason}, dispatched {out.get('dispatched')}, "
          f"dead-lettered {out.get('dead_lettered')}, released {out.get('released')}")
elif fn == "orchestrator" and event.get("action") == "redrive":
    need(out.get("kind") == "redrive", "a redrive report (kind redrive)")
    need(out.get("dry_run") == event.get("dry_run", False), f"dry_run {event.get('dry_run', False)}")
    print(f"redrive: dry run {json.dumps(out['dry_run'])}, {out.get('dead')} dead-lettered, "
          f"{out.get('moved')} moved")
elif fn == "orchestrator":
    action = event["action"]
    need(out.get("kind") == "control" and out.get("action") == action, f"control outcome of {action}")
    control = out.get("control") or {}
    circuit = out.get("circuit")
    effect = {
        "pause": lambda: control.get("paused") is True,
        "resume": lambda: control.get("paused") is False,
        "circuit_open": lambda: circuit and circuit[0] == "open",
        "circuit_close": lambda: circuit and circuit[0] == "closed",
        "set_quota": lambda: control.get("quota") == event.get("quota"),
    }.get(action, lambda: True)
    need(effect(), f"the effect of {action}")
    detail = f"paused {json.dumps(control.get('paused'))}"
    if circuit:
        detail += f", circuit {circuit[0]} (epoch {circuit[1]})"
    if control.get("quota"):
        detail += f", quota override {control['quota']}"
    print(f"control {action}: {detail}")
else:
    # The worker. The samples have fixed timestamps in the past: the job arrives long after its
    # slot and is re-queued untried (late); the health check (epoch 0) passes on the simulator
    # and closes nothing, the circuit being closed.
    expected = {
        "worker-job.json": {"late"},
        "worker-batch.json": {"batch"},
        "worker-health-check.json": {"healthy"},
    }.get(name)
    if name == "worker-batch.json":
        # Each job of the batch has its own fate: both late here, re-queued untried.
        fates = [o.get("outcome") for o in out.get("outcomes", [])]
        need(fates == ["late", "late"], f"each job of the batch late, not {fates}")
    outcome = out.get("outcome")
    need(outcome is not None, "a worker outcome")
    if expected is not None:
        need(outcome in expected, f"outcome {' or '.join(sorted(expected))}")
    rest = ", ".join(f"{k} {json.dumps(v)}" for k, v in out.items() if k != "outcome")
    print(f"{outcome} ({rest})")
PY

# invoke FN FILE: one synchronous invoke through cargo-lambda's Invoke API, watched: a
# function instance that dies fails it at once instead of leaving it hanging.
invoke() {
  local fn="$1" file="$2" base
  base="$(basename "$file" .json)"
  local out="$LOGS/answer-$base.json" err="$LOGS/invoke-$base.err"
  local t0 i_pid rc=0
  t0="$(date +%s%N)"
  timeout "$INVOKE_TIMEOUT_S" "$CARGO_LAMBDA" lambda invoke --invoke-address 127.0.0.1 \
    --invoke-port "$LAMBDA_PORT" --output-format json --data-file "$file" "$fn" >"$out" 2>"$err" &
  i_pid=$!
  while kill -0 "$i_pid" 2>/dev/null; do
    if ! (check_functions) 2>/dev/null; then
      kill "$i_pid" 2>/dev/null || true
      wait "$i_pid" 2>/dev/null || true
      check_functions
    fi
    sleep 0.05
  done
  wait "$i_pid" || rc=$?
  INVOKE_MS=$((($(date +%s%N) - t0) / 1000000))
  if [[ $rc -ne 0 ]]; then
    FAILED_LOGS+=("$err")
    [[ $rc -ne 124 ]] || die "$file -> $fn: no answer within $INVOKE_TIMEOUT_S s"
    die "$file -> $fn: the invocation failed (cargo lambda invoke exit $rc): $(tr -s '\n ' ' ' <"$err" | cut -c1-600)"
  fi
  local summary
  summary="$("$PY" "$LOGS/check.py" "$file" "$fn" "$out" 2>&1)" ||
    die "$file -> $fn: $summary"
  printf 'emulator: ok  %-28s -> %-12s %6d ms  %s\n' "${file#events/}" "$fn" "$INVOKE_MS" "$summary"
}

# The order matters: the controls first (ending with the circuit closed, dispatching resumed and
# the quota override matching the simulator's), then a run over the empty queues, then the
# worker's samples. Samples not listed here run after them, routed by their name.
ORDER=(control-pause control-resume control-circuit-open control-circuit-close control-set-quota
  control-redrive scheduled worker-health-check worker-job)
EVENTS=()
for name in "${ORDER[@]}"; do
  [[ -f "events/$name.json" ]] || die "events/$name.json is missing"
  EVENTS+=("events/$name.json")
done
for f in events/*.json; do
  [[ " ${EVENTS[*]} " == *" $f "* ]] || EVENTS+=("$f")
done

say "invoking ${#EVENTS[@]} sample events"
for f in "${EVENTS[@]}"; do
  case "$(basename "$f")" in
    control-* | scheduled*) invoke orchestrator "$f" ;;
    worker-*) invoke worker "$f" ;;
    *) die "$f: no function takes it (names: control-*, scheduled*, worker-*)" ;;
  esac
done

# --- 5. jobs through scheduled runs ------------------------------------------------------

# Jobs sent to the job queue; scheduled runs dispatch them to the worker through the Invoke API,
# and the worker calls the simulator. A job the worker gets too late for its slot is re-queued
# and dispatched again, by the same run or, as on AWS, by the next tick: up to MAX_RUNS runs.
# In the end each job has been called once, none over the quota, none dead-lettered, and no
# queue holds anything.
MAX_RUNS=3
cat >"$LOGS/stack.py" <<'PY'
import json
import sys
import time
import urllib.request

import boto3

mode, stats_url, endpoint, *queues = sys.argv[1:]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")


def stats():
    return json.load(urllib.request.urlopen(stats_url))


def depth():
    total = {}
    for url in queues:
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        total[url.rsplit("/", 1)[-1]] = sum(int(a[k]) for k in (
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"))
    return total


if mode == "drain":
    # Empties the queues (what the samples left: the late sample job) and prints the accepted
    # calls so far.
    for _ in range(50):
        left = depth()
        if not any(left.values()):
            break
        for url in queues:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if got:
                sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        time.sleep(0.05)
    else:
        sys.exit(f"the queues do not empty: {left}")
    print(stats()["accepted"])
elif mode == "depth":
    # A worker's last write may land just after the run returned: give it a moment.
    for _ in range(10):
        d = depth()
        if not any(d.values()):
            break
        time.sleep(0.1)
    print(sum(d.values()))
else:
    before = int(sys.stdin.readline())
    want = int(sys.stdin.readline())
    reports = [json.loads(line) for line in sys.stdin if line.strip()]
    s, d = stats(), depth()
    called = s["accepted"] - before
    dispatched = sum(r.get("dispatched", 0) for r in reports)
    problems = []
    if dispatched < want:
        problems.append(f"dispatched {dispatched}, expected at least {want}")
    for key in ("dead_lettered", "invoke_failures"):
        n = sum(r.get(key, 0) for r in reports)
        if n:
            problems.append(f"{key.replace('_', ' ')}: {n}")
    if called != want:
        problems.append(f"the API accepted {called} calls, expected {want} (one per job)")
    if s["throttled"]:
        problems.append(f"the API refused {s['throttled']} calls over its quota")
    if any(d.values()):
        problems.append(f"messages left in the queues after {len(reports)} runs: {d} "
                        "(re-queued late each time: see the worker logs and `slot_in_ms` in "
                        "lambda-proxy.log)")
    if problems:
        sys.exit("; ".join(problems))
    print(f"{len(reports)} run(s), {dispatched} dispatched ({dispatched - want} again after a "
          f"late arrival), {called} API calls, none throttled, queues empty, "
          f"busiest window {s.get('max_in_any_window')}")
PY
stack() { "$PY" "$LOGS/stack.py" "$1" "$SIM/_sim/stats" "$MOTO" "${STACK[QUEUE_URL]}" "${STACK[RETRY_QUEUE_URL]}" "${STACK[DLQ_URL]}"; }

# run_jobs LABEL FILE: sends the jobs of FILE (JSON lines, distinct ids) to the emptied queues
# and runs scheduled invocations until they are done.
run_jobs() {
  local label="$1" file="$2" before jobs sent run left summary
  local reports=()
  before="$(stack drain)" || die "$label: cannot empty the queues or read the simulator's stats"
  jobs="$(grep -cve '^[[:space:]]*$' "$file")"
  sent="$(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    TABLE_NAME="${STACK[TABLE_NAME]}" QUEUE_URL="${STACK[QUEUE_URL]}" \
    RETRY_QUEUE_URL="${STACK[RETRY_QUEUE_URL]}" DLQ_URL="${STACK[DLQ_URL]}" \
    "$QO" send --endpoint "$MOTO" "$file" 2>&1)" || die "$label: qo send $file failed: $sent"
  say "$label: sent $jobs job(s) to the job queue"
  for run in $(seq 1 "$MAX_RUNS"); do
    invoke orchestrator events/scheduled.json
    reports+=("$(tr -d '\n' <"$LOGS/answer-scheduled.json")")
    left="$(stack depth)" || die "$label: cannot read the queue depths"
    [[ $left -gt 0 && $run -lt $MAX_RUNS ]] || break
    say "$label: $left job(s) still queued (re-queued by the worker): another scheduled run, as the next tick would"
  done
  summary="$(printf '%s\n' "$before" "$jobs" "${reports[@]}" | stack after 2>&1)" ||
    die "$label: $summary"
  printf 'emulator: ok  %-28s -> %-12s %9s  %s\n' "$label" "worker" "" "$summary"
}

# The 20 jobs of the sample backlog, at the pace of the quota override (20/s).
run_jobs jobs.jsonl events/jobs.jsonl
# One job on a quiet queue, the usual case between bursts: the run receives it, dispatches it
# and long-polls the empty queue while its invoke is in flight.
printf '%s\n' '{"id":"emulator-single","path":"/v1/items/single"}' >"$LOGS/one-job.jsonl"
run_jobs "one job, quiet queue" "$LOGS/one-job.jsonl"

check_functions
say "all ${#EVENTS[@]} sample events, the jobs of events/jobs.jsonl and a single job ran on the aarch64 bootstraps in $((SECONDS - start)) s"
