#!/usr/bin/env bash
# The project's test command: bash tests/run-all.sh
# Runs every stage; `bash tests/run-all.sh STAGE...` runs setup and then only the named ones.
#
# Installs the pinned tools (tests/setup.sh), then runs each stage below in order and stops at
# the first failure, naming the stage. CI (the environment variable) is passed through to the
# tests: with CI=true a test that needs a local service (moto, cargo lambda watch) fails
# instead of skipping.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

export QO_VENV="$REPO/.venv"
export PATH="$QO_VENV/bin:$PATH"
# cargo-lambda (cargo-zigbuild) runs `$CARGO_ZIGBUILD_PYTHON_PATH -m ziglang` to find zig.
export CARGO_ZIGBUILD_PYTHON_PATH="${CARGO_ZIGBUILD_PYTHON_PATH:-$QO_VENV/bin/python3}"
export SAM_CLI_TELEMETRY=0
# A fresh clone in CI builds everything once: incremental state (a GB or more under
# target/debug/incremental) would only cost disk and time there.
if [[ "${CI:-}" == true || "${CI:-}" == 1 ]]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

CURRENT_STAGE="(start)"
STARTED=$SECONDS
DONE=()

on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '\nrun-all: FAILED at stage "%s" (exit %d) after %d s\n' "$CURRENT_STAGE" "$rc" "$((SECONDS - STARTED))" >&2
  fi
}
trap on_exit EXIT

# Runs stage_<name> under `set -e`: its first failing command ends the run, and the EXIT trap
# names the stage.
run_stage() {
  CURRENT_STAGE="$1"
  local t=$SECONDS
  printf '\n==> run-all: stage %s\n' "$1"
  "stage_$1"
  printf '==> run-all: stage %s passed (%d s; target/ %s, free on its disk %s)\n' "$1" \
    "$((SECONDS - t))" "$(disk_use target)" "$(disk_free .)"
  DONE+=("$1")
}

# The size of a directory ("-" when it does not exist yet), and the space left on the disk
# holding PATH: a build that runs out of disk fails with os error 28 in whichever step was
# writing, so each stage line says how much the build has taken.
disk_use() {
  if [[ -d "$1" ]]; then du -sh "$1" 2>/dev/null | cut -f1; else echo -; fi
}
disk_free() {
  df -h --output=avail "$1" 2>/dev/null | tail -n1 | tr -d ' '
}

# --- stages -----------------------------------------------------------------------------------

stage_setup() {
  bash "$REPO/tests/setup.sh"
}

stage_fmt() {
  cargo fmt --all --check
}

# `--all-features`: `qo`'s `aws` feature (the operations, `qo local --aws-endpoint`) is off by
# default so that `qo local` builds without the AWS SDK; both builds are linted and tested.
stage_clippy() {
  cargo clippy --workspace --all-targets --all-features -- -D warnings
  cargo clippy -p qo --all-targets -- -D warnings
}

stage_test() {
  echo "CI=${CI:-<unset>} (CI=true or 1: tests that need a local service fail instead of skipping)"
  # Each test that starts moto or `cargo lambda watch` (qo_testkit::require) writes a line here.
  export QO_SERVICE_LOG="$REPO/target/qo-service-tests.log"
  mkdir -p "$REPO/target"
  rm -f "$QO_SERVICE_LOG"
  cargo test --workspace --all-features
  # `qo` as the README's first command builds it, without the AWS SDK.
  cargo test -p qo --test it -- --exact local::without_the_aws_feature_operations_are_refused_naming_the_feature
  service_summary "$QO_SERVICE_LOG"
}

# Counts the tests that ran against a local service, by service, and those that skipped.
service_summary() {
  local log="$1"
  if [[ ! -s "$log" ]]; then
    echo "run-all: no test started a local service (moto, cargo lambda watch)" >&2
    return 1
  fi
  echo "run-all: tests that started a local service (outcome, service, tests):"
  awk -F '\t' '
    !seen[$0]++ { n[$1 "\t" $2]++ }
    END { for (k in n) { split(k, p, "\t"); printf "  %-8s %-20s %d\n", p[1], p[2], n[k] } }
  ' "$log" | sort
  if grep -q '^skipped' "$log"; then
    echo "run-all: some service tests skipped (their services could not start; CI=true fails instead)"
  fi
}

# SAM: lint and validate the template, then build the functions the way a deployment would
# (cargo lambda build, cross-compiled with zig). Options come from samconfig.toml.
stage_sam() {
  if [[ ! -f template.yaml ]]; then
    echo "template.yaml not present yet: SAM stages skipped"
    return 0
  fi
  bash "$REPO/tests/sam.sh"
}

# Emulator: each bootstrap that stage sam built, run as Lambda would behind cargo-lambda's
# runtime emulator (under qemu: they are aarch64), with every sample event in events/ and then
# jobs through scheduled runs (tests/emulator.sh). The Rust end-to-end tests of stage test
# cover the same path with host builds.
stage_emulator() {
  if [[ ! -f template.yaml ]]; then
    echo "template.yaml not present yet: SAM stages skipped"
    return 0
  fi
  bash "$REPO/tests/emulator.sh"
}

# --- run --------------------------------------------------------------------------------------

ALL_STAGES=(setup fmt clippy test sam emulator)
if [[ $# -gt 0 ]]; then
  STAGES=(setup)
  for stage in "$@"; do
    [[ "$stage" == setup ]] || STAGES+=("$stage")
  done
else
  STAGES=("${ALL_STAGES[@]}")
fi
for stage in "${STAGES[@]}"; do
  if [[ " ${ALL_STAGES[*]} " != *" $stage "* ]]; then
    CURRENT_STAGE="$stage"
    echo "run-all: unknown stage '$stage' (stages: ${ALL_STAGES[*]})" >&2
    exit 2
  fi
done
for stage in "${STAGES[@]}"; do
  run_stage "$stage"
done

CURRENT_STAGE="(done)"
printf '\nrun-all: OK: stages passed (%s) in %d s\n' "${DONE[*]}" "$((SECONDS - STARTED))"
