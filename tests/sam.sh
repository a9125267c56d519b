#!/usr/bin/env bash
# SAM checks, offline and without Docker:
#   1. cfn-lint on template.yaml (errors, warnings and informational rules);
#   2. `sam validate --lint`;
#   3. the template's timeouts: FUNCTION_TIMEOUT_S is each function's Timeout, and the worker's
#      default timeout covers the worst case of one job (the sum in template.yaml);
#   4. events/: every sample is JSON, jobs.jsonl holds 20 jobs with relative paths;
#   5. `sam build --beta-features` (options from samconfig.toml: cached, parallel), which runs
#      `cargo lambda build --release --arm64 --bin <Binary>` with zig as the cross linker;
#   6. .aws-sam/build/{Orchestrator,Worker}Function/bootstrap exist and are aarch64 ELF
#      executables (read from the ELF header: `file` may be absent).
#
# Usage: bash tests/sam.sh [--no-build]
# Needs the tools tests/setup.sh installs into .venv (aws-sam-cli, cfn-lint, cargo-lambda, ziglang)
# and the rustup target aarch64-unknown-linux-gnu.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${QO_VENV:-$REPO/.venv}"
export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# cargo-lambda (cargo-zigbuild) runs `$CARGO_ZIGBUILD_PYTHON_PATH -m ziglang` to find zig.
export CARGO_ZIGBUILD_PYTHON_PATH="${CARGO_ZIGBUILD_PYTHON_PATH:-$VENV/bin/python3}"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h | --help)
      sed -n '2,16p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "sam.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf 'sam.sh: %s\n' "$*"; }
die() {
  printf 'sam.sh: ERROR: %s\n' "$*" >&2
  exit 1
}
CHECKED=()
ok() {
  say "ok: $*"
  CHECKED+=("$*")
}

start=$SECONDS
for exe in sam cfn-lint cargo-lambda zig python3; do
  [[ -x "$VENV/bin/$exe" ]] || die "$VENV/bin/$exe is missing: run bash tests/setup.sh"
done
[[ -f template.yaml && -f samconfig.toml ]] || die "template.yaml or samconfig.toml is missing"

# 1. cfn-lint: exit status is a bit mask (2 error, 4 warning, 8 informational); any is a failure.
say "cfn-lint $(cfn-lint --version | awk '{print $2}') template.yaml"
cfn-lint --include-checks I -- template.yaml
ok "cfn-lint: no errors, warnings or informational findings"

# 2. sam validate --lint (runs cfn-lint through SAM's own pinned rules).
say "$(sam --version): sam validate --lint"
sam validate --lint
ok "sam validate --lint: valid"

# 3 and 4. The timeouts and the event samples, read with cfn-lint's YAML loader (it knows the
# short-form intrinsics such as !Ref).
"$VENV/bin/python3" - <<'PY'
import json
import pathlib
import sys

from cfnlint.decode import decode

tpl, errors = decode("template.yaml")
if errors:
    sys.exit(f"template.yaml: {errors}")
params = tpl["Parameters"]
res = tpl["Resources"]


def default(name):
    return float(params[name]["Default"])


def fail(msg):
    sys.exit(f"sam.sh: ERROR: {msg}")


# FUNCTION_TIMEOUT_S must be the function's own Timeout, so the binary checks the real value.
for fn in ("OrchestratorFunction", "WorkerFunction"):
    props = res[fn]["Properties"]
    timeout = props["Timeout"]
    env = props["Environment"]["Variables"]
    if env.get("FUNCTION_TIMEOUT_S") != timeout:
        fail(f"{fn}: FUNCTION_TIMEOUT_S is {env.get('FUNCTION_TIMEOUT_S')}, its Timeout is {timeout}")
    meta = res[fn].get("Metadata", {})
    if meta.get("BuildMethod") != "rust-cargolambda" or not meta.get("BuildProperties", {}).get("Binary"):
        fail(f"{fn}: Metadata needs BuildMethod rust-cargolambda and BuildProperties.Binary")

# The worker's worst case for one job, with the defaults (seed 003: attempts x (connect + read)
# + margin), as qo_worker::lambda::WorstCase counts it: the slot wait and tolerance, one API
# call, the 5 AWS SDK calls after it on the longest path, a 2 s margin. The SDK, slot-wait and
# tolerance values are the binaries' defaults (not template parameters).
MAX_SLOT_WAIT_S, CALL_TOLERANCE_S = 5.0, 0.005
API_ATTEMPTS = 1
SDK_MAX_ATTEMPTS, SDK_CONNECT_S, SDK_READ_S = 3, 3.0, 5.0
SDK_CALLS_AFTER_THE_CALL = 5
MARGIN_S = 2.0
api = API_ATTEMPTS * (default("ApiConnectTimeoutMs") + default("ApiReadTimeoutMs")) / 1000
sdk = SDK_MAX_ATTEMPTS * (SDK_CONNECT_S + SDK_READ_S)
need = MAX_SLOT_WAIT_S + CALL_TOLERANCE_S + api + SDK_CALLS_AFTER_THE_CALL * sdk + MARGIN_S
have = default("WorkerTimeout")
if have < need:
    fail(f"WorkerTimeout default {have:g} s is below the worst case {need:g} s")
print(
    f"sam.sh: ok: WorkerTimeout {have:g} s >= slot wait {MAX_SLOT_WAIT_S + CALL_TOLERANCE_S:g} "
    f"+ API {api:g} + {SDK_CALLS_AFTER_THE_CALL} x SDK {sdk:g} + margin {MARGIN_S:g} = {need:g} s"
)
# The orchestrator's stop margin defaults to its worst-case finish
# (qo_orchestrator::config::FinishBudget): invokes in flight, SQS batches for MAX_IN_FLIGHT
# deletes and 10 held releases, a fenced save, the lease release; its timeout must hold one SDK
# call + that margin, and leave time to dispatch.
INVOKE_MAX_RETRIES, INVOKE_RETRY_WAIT_S, MAX_IN_FLIGHT, MAX_HELD = 4, 10.0, 64, 10
invokes = (INVOKE_MAX_RETRIES + 1) * (SDK_CONNECT_S + SDK_READ_S) + INVOKE_MAX_RETRIES * INVOKE_RETRY_WAIT_S
batches = -(-(MAX_IN_FLIGHT + 9) // 10) + -(-MAX_HELD // 10)
stop_margin_s = invokes + (batches + 2) * sdk
idle_exit_s = 30
for name in ("Default", "MinValue"):
    value = float(params["OrchestratorTimeout"][name])
    if value < sdk + stop_margin_s:
        fail(f"OrchestratorTimeout {name} {value:g} s is below one SDK call + the stop margin {sdk + stop_margin_s:g} s")
if default("OrchestratorTimeout") <= stop_margin_s + idle_exit_s:
    fail("OrchestratorTimeout default leaves no time to dispatch")
print(f"sam.sh: ok: OrchestratorTimeout >= SDK {sdk:g} + stop margin {stop_margin_s:g} s")

# Event samples: JSON, with the shapes the functions take.
events = pathlib.Path("events")
expected = {
    "scheduled.json": lambda e: e["detail-type"] == "Scheduled Event" and e["source"] == "aws.events",
    "worker-job.json": lambda e: e["kind"] == "job"
    and e["job"]["path"].startswith("/")
    and all(isinstance(e[k], int) for k in ("slot_at", "dispatched_at", "epoch")),
    "worker-health-check.json": lambda e: e["kind"] == "health_check" and isinstance(e["sent_at"], int),
    "control-pause.json": lambda e: e == {"action": "pause"},
    "control-resume.json": lambda e: e == {"action": "resume"},
    "control-circuit-open.json": lambda e: e == {"action": "circuit_open"},
    "control-circuit-close.json": lambda e: e == {"action": "circuit_close"},
    "control-set-quota.json": lambda e: e["action"] == "set_quota" and "/" in e["quota"],
    "control-redrive.json": lambda e: e["action"] == "redrive",
}
for name, check in expected.items():
    path = events / name
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if not check(event):
        fail(f"{path}: unexpected content {event}")
jobs = [line for line in (events / "jobs.jsonl").read_text().splitlines() if line.strip()]
for i, line in enumerate(jobs, 1):
    try:
        job = json.loads(line)
    except ValueError as e:
        fail(f"events/jobs.jsonl line {i}: {e}")
    if not str(job.get("path", "")).startswith("/"):
        fail(f"events/jobs.jsonl line {i}: path must start with /")
if len(jobs) != 20:
    fail(f"events/jobs.jsonl has {len(jobs)} jobs, expected 20")
print(f"sam.sh: ok: events/: {len(expected)} samples and {len(jobs)} jobs parse")
PY
CHECKED+=("timeouts: FUNCTION_TIMEOUT_S wired, WorkerTimeout covers the worst case" "events/ samples parse")

if [[ "$BUILD" == 0 ]]; then
  say "--no-build: sam build skipped"
else
  # 5. sam build. Output goes to .aws-sam/build; cargo builds into the workspace target dir
  #    (target/aarch64-unknown-linux-gnu/release, copied to target/lambda/<bin>/bootstrap).
  rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu ||
    die "rustup target aarch64-unknown-linux-gnu is not installed: run bash tests/setup.sh"
  say "$(cargo lambda --version); zig $(zig version): sam build --beta-features"
  t=$SECONDS
  sam build --beta-features
  build_s=$((SECONDS - t))
  ok "sam build in ${build_s} s"

  # 6. The artifacts: 64-bit little-endian ELF, executable or PIE, e_machine 0xB7 (AArch64).
  for fn in OrchestratorFunction WorkerFunction; do
    f=".aws-sam/build/$fn/bootstrap"
    [[ -f "$f" ]] || die "$f was not produced"
    [[ -x "$f" ]] || die "$f is not executable"
    read -r -a h <<<"$(od -An -tx1 -N20 -v "$f" | tr '\n' ' ')"
    [[ "${#h[@]}" -eq 20 ]] || die "$f is shorter than an ELF header"
    [[ "${h[0]}${h[1]}${h[2]}${h[3]}" == 7f454c46 ]] || die "$f is not an ELF file (magic ${h[*]:0:4})"
    [[ "${h[4]}" == 02 ]] || die "$f is not a 64-bit ELF (EI_CLASS ${h[4]})"
    [[ "${h[5]}" == 01 ]] || die "$f is not little-endian (EI_DATA ${h[5]})"
    [[ "${h[16]}${h[17]}" == 0200 || "${h[16]}${h[17]}" == 0300 ]] ||
      die "$f is not an executable (e_type ${h[17]}${h[16]})"
    [[ "${h[18]}${h[19]}" == b700 ]] || die "$f is not aarch64 (e_machine 0x${h[19]}${h[18]}, want 0x00b7)"
    ok "$f: ELF64 LSB aarch64 executable, $(($(wc -c <"$f") / 1024)) KiB"
  done
fi

say "all checks passed in $((SECONDS - start)) s:"
for c in "${CHECKED[@]}"; do
  say "  - $c"
done
