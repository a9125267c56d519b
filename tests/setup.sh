#!/usr/bin/env bash
# Installs everything the tests need into the checkout, with pinned versions:
#   - a Python virtual environment at <repo>/.venv with moto[server], cargo-lambda, ziglang,
#     aws-sam-cli and cfn-lint (see PINS below);
#   - a `zig` shim in .venv/bin that runs the ziglang package's zig binary;
#   - the rustup components and targets the build needs (rustfmt, clippy, aarch64 Linux);
#   - the Debian packages qemu-user and libc6-arm64-cross (apt-get, as root), with which
#     tests/emulator.sh runs the aarch64 Lambda binaries here.
#
# Idempotent: a stamp file named after a hash of the pin list makes a second run skip pip.
# Needs only python3 (with venv and pip), cargo and rustup (and apt-get for the Debian packages);
# reaches only package registries.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

# The pinned tool versions. Change a pin here and the next run reinstalls.
# ziglang 0.14.1: cargo-lambda 1.9.2 needs zig >= 0.13; 0.14.1 is verified to link
# aarch64-unknown-linux-gnu Lambda binaries (cargo lambda build --arm64).
PINS=(
  "moto[server]==5.2.5"
  "cargo-lambda==1.9.2"
  "ziglang==0.14.1"
  "aws-sam-cli==1.170.0"
  "cfn-lint==1.58.0"
)
RUST_TARGETS=(aarch64-unknown-linux-gnu)
RUST_COMPONENTS=(rustfmt clippy)

say() { printf 'setup: %s\n' "$*"; }
die() {
  printf 'setup: ERROR: %s\n' "$*" >&2
  exit 1
}

start=$SECONDS
command -v python3 >/dev/null || die "python3 not found on PATH"
command -v cargo >/dev/null || die "cargo not found on PATH"

# The stamp depends on the pins and on the interpreter the venv was made from.
pyver="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
hash="$(printf '%s\n' "${PINS[@]}" "python=$pyver" | sha256sum | cut -c1-16)"
stamp="$VENV/.qo-setup-$hash"

# 1. Python virtual environment. Recreated when it no longer fits: its base interpreter is gone
#    or has another version than python3, or the checkout moved (scripts point to the old path).
if [[ -e "$VENV" ]]; then
  venv_pyver="$("$VENV/bin/python3" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)"
  if [[ "$venv_pyver" != "$pyver" ]]; then
    say "existing .venv has python '${venv_pyver:-none}', python3 is $pyver: recreating it"
    rm -rf "$VENV"
  elif ! head -n3 "$VENV/bin/pip" 2>/dev/null | grep -qF "$VENV/bin/python"; then
    say "existing .venv was made for another path: recreating it"
    rm -rf "$VENV"
  fi
fi
if [[ ! -x "$VENV/bin/python3" ]]; then
  say "creating .venv with python $pyver"
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi

# 2. Pinned Python tools.
if [[ -f "$stamp" ]]; then
  say "python tools up to date (${stamp##*/})"
else
  say "installing pinned python tools (a few minutes on a fresh machine): ${PINS[*]}"
  rm -f "$VENV"/.qo-setup-*
  "$VENV/bin/python3" -m pip install --disable-pip-version-check --quiet "${PINS[@]}" ||
    die "pip install of the pinned tools failed"
  "$VENV/bin/python3" -m pip check --disable-pip-version-check >/dev/null ||
    die "pip check found conflicting requirements in .venv"
  fresh_install=1
fi

# 3. A `zig` on PATH. cargo-lambda (through cargo-zigbuild) first tries `python3 -m ziglang`
#    (python3 from PATH, or $CARGO_ZIGBUILD_PYTHON_PATH), then `zig` from PATH (or
#    $CARGO_ZIGBUILD_ZIG_PATH). With .venv/bin first on PATH the first already works; the shim
#    makes the second work too, whichever python3 comes first.
zig_bin="$("$VENV/bin/python3" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')" ||
  die "the ziglang package is not importable from .venv"
[[ -x "$zig_bin" ]] || die "ziglang ships no zig binary at $zig_bin"
shim="$VENV/bin/zig"
shim_text="$(printf '#!/bin/sh\n# Written by tests/setup.sh: runs the zig binary of the ziglang package.\nexec "%s" "$@"\n' "$zig_bin")"
if [[ ! -x "$shim" || "$(cat "$shim")" != "$shim_text" ]]; then
  printf '%s\n' "$shim_text" >"$shim"
  chmod +x "$shim"
  say "wrote .venv/bin/zig shim"
fi

# 4. Rust components and targets.
if command -v rustup >/dev/null; then
  installed_components="$(rustup component list --installed 2>/dev/null || true)"
  for c in "${RUST_COMPONENTS[@]}"; do
    if ! grep -q "^$c" <<<"$installed_components"; then
      say "rustup component add $c"
      rustup component add "$c" || die "rustup component add $c failed"
    fi
  done
  installed_targets="$(rustup target list --installed 2>/dev/null || true)"
  for t in "${RUST_TARGETS[@]}"; do
    if ! grep -qx "$t" <<<"$installed_targets"; then
      say "rustup target add $t"
      rustup target add "$t" || die "rustup target add $t failed"
    fi
  done
else
  say "WARNING: rustup not found: cannot check components (${RUST_COMPONENTS[*]}) and targets (${RUST_TARGETS[*]})"
fi

# 5. qemu user-mode emulation and the aarch64 glibc, for tests/emulator.sh, which runs the
#    aarch64 bootstraps of `sam build` on this machine. Debian packages, installed with apt-get
#    when missing: as root, or through `sudo -n`; otherwise a warning (that stage then fails).
APT_PACKAGES=(qemu-user libc6-arm64-cross)
if command -v qemu-aarch64 >/dev/null && [[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]]; then
  say "qemu-aarch64 and the aarch64 glibc present"
elif ! command -v apt-get >/dev/null; then
  say "WARNING: no apt-get: install qemu-aarch64 (user mode) and an aarch64 glibc in /usr/aarch64-linux-gnu for tests/emulator.sh"
else
  apt_get=()
  if [[ "$(id -u)" -eq 0 ]]; then
    apt_get=(env DEBIAN_FRONTEND=noninteractive apt-get)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt_get=(sudo -n env DEBIAN_FRONTEND=noninteractive apt-get)
  fi
  if [[ ${#apt_get[@]} -eq 0 ]]; then
    say "WARNING: not root and no password-less sudo: run 'apt-get install ${APT_PACKAGES[*]}' as root for tests/emulator.sh"
  else
    say "installing ${APT_PACKAGES[*]} (apt-get)"
    "${apt_get[@]}" update -qq || die "apt-get update failed"
    apt_log="$("${apt_get[@]}" install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" 2>&1)" ||
      die "apt-get install ${APT_PACKAGES[*]} failed:"$'\n'"$apt_log"
    command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 is still missing after installing qemu-user"
    [[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]] ||
      die "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 is still missing after installing libc6-arm64-cross"
  fi
fi

# 6. Verify the tools. Every run checks that the executables exist; after an install they
#    are also run once.
for exe in python3 moto_server cargo-lambda sam cfn-lint zig; do
  [[ -x "$VENV/bin/$exe" ]] || die ".venv/bin/$exe is missing"
done
if [[ "${fresh_install:-0}" == 1 ]]; then
  say "verifying the installed tools"
  export PATH="$VENV/bin:$PATH"
  moto_server --help >/dev/null || die "moto_server --help failed"
  cargo lambda --version >/dev/null || die "cargo lambda --version failed"
  SAM_CLI_TELEMETRY=0 sam --version >/dev/null || die "sam --version failed"
  cfn-lint --version >/dev/null || die "cfn-lint --version failed"
  zig version >/dev/null || die "zig version failed"
  python3 -m ziglang version >/dev/null || die "python3 -m ziglang version failed"
  printf '%s\n' "${PINS[@]}" >"$stamp"
  say "$(cargo lambda --version); $(SAM_CLI_TELEMETRY=0 sam --version); $(cfn-lint --version); zig $(zig version)"
fi

say "done in $((SECONDS - start)) s"
