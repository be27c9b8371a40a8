#!/usr/bin/env bash
# Set up what a make target needs on a fresh machine, idempotently:
#   1. Debian packages (installed with apt-get when running as root, else a clear message),
#   2. the virtual environment .venv with the project and the target's optional dependencies,
#      pinned by constraints.txt,
#   3. for `test`, `demo`, `synth` and `bench`: PyFlink's own environment .venv-flink
#      (kda_sql/requirements-flink.txt), so that no test installs anything; its Flink jars are
#      also what the compact-batch decoder (kda_sql/decoder) compiles against, with the JDK's
#      javac (openjdk-17-jdk-headless), in every target: the stream rules' package, the
#      connected run and the stream benchmark all carry the decoder jar.
# Usage: scripts/bootstrap.sh TARGET    (TARGET: demo | test | synth | bench)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: scripts/bootstrap.sh demo|test|synth|bench}
jdk="openjdk-17-jdk-headless"  # javac for the decoder jar (kda_sql/decoder/build.py)
case "$target" in
  # The connected demo runs the Lambda handlers against moto's server (flask) and a real
  # influxd, and the stream rules on PyFlink: the same set-up as the tests.
  demo)  extras="all";   debs="mosquitto influxdb gcc-aarch64-linux-gnu libc6-dev-arm64-cross $jdk" ;;
  # chromium: tests/report draws the fleet report in a real (headless) browser
  test)  extras="all";   debs="mosquitto influxdb gcc-aarch64-linux-gnu libc6-dev-arm64-cross chromium $jdk" ;;
  synth) extras="cdk";   debs="$jdk" ;;
  bench) extras="all";   debs="mosquitto influxdb gcc-aarch64-linux-gnu libc6-dev-arm64-cross $jdk" ;;
  *) echo "bootstrap: unknown target '$target' (demo, test, synth or bench)" >&2; exit 2 ;;
esac

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
missing=()
for pkg in $debs; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
    echo "bootstrap: install them first:  sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
# The Debian packages start their daemons; the project starts its own on 127.0.0.1 instead.
for service in mosquitto influxdb; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" >/dev/null 2>&1 || true
  fi
done

# --- Python ------------------------------------------------------------------------------
python=""
for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate; break
  fi
done
if [ -z "$python" ]; then
  echo "bootstrap: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  say "installing uv into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi

stamp=".venv/.installed-$extras"
digest=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  say "installing the project with [$extras] (pinned by constraints.txt)"
  .venv/bin/uv pip install --quiet --python .venv/bin/python -c constraints.txt -e ".[$extras]"
  echo "$digest" > "$stamp"
fi

# --- Gateway component wheels (test, synth): every component artifact carries the wheels of its
#     dependencies (edge_runtime/build.py); downloaded once per set of pins into the wheel cache
#     ($IIOT_WHEEL_CACHE or ~/.cache/iiot-platform/wheels), so that no test and no synth does.
if [ "$target" = test ] || [ "$target" = synth ]; then
  .venv/bin/python -m edge_runtime.build --fetch-wheels >/dev/null
fi

# --- PyFlink (every target): its own environment, pinned to the Flink version production runs;
#     synth compiles the decoder jar the Flink package carries against its Flink jars ----------
.venv/bin/python -m kda_sql.flink_env

# --- CDK CLI (synth): aws-cdk 2.x pinned by package.json ------------------------------------
if [ "$target" = synth ] && [ ! -x node_modules/.bin/cdk ]; then
  say "installing the CDK CLI (package.json)"
  npm install --no-audit --no-fund --silent
fi
