#!/usr/bin/env bash
# One command from a fresh clone: create .venv, install, then run the demo or the tests.
#   bash scripts/run.sh demo     # set up, then run the demo (writes demo_out/)
#   bash scripts/run.sh test     # set up, then lint and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-}"
if [[ "$what" != "demo" && "$what" != "test" ]]; then
  echo "usage: bash scripts/run.sh demo|test" >&2
  exit 2
fi

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a looser requirement can pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# The versions CI verified (constraints.txt); a newer release of any dependency arrives only when
# that file is refreshed after a green run.
python -m pip install -q -c constraints.txt -e ".[train,export,runtime,quantize,dev]"

if [[ "$what" == "demo" ]]; then
  python scripts/demo.py --out demo_out
else
  # System packages the tests need: nginx (tests/test_serve_scaleout.py runs two servers behind it)
  # and the C++ host's build tools and libraries (tests/test_cpp_host.py builds hosts/cpp; docs/cpp.md).
  debian=(cmake g++ pkg-config nlohmann-json3-dev libpng-dev libssl-dev libzip-dev libexif-dev libcli11-dev libgtest-dev)
  missing=()
  command -v nginx >/dev/null || missing+=(nginx-light)
  for package in "${debian[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "note: missing ${missing[*]}: tests/test_serve_scaleout.py and tests/test_cpp_host.py will fail; install them (Debian)" >&2
    fi
  fi
  # The server's environment (python -m runtime.serve): PyTriton pins numpy < 2, so it lives beside
  # the main one; the serving tests start servers with its interpreter (docs/serving.md).
  if [[ ! -x .venv-serve/bin/python ]]; then
    "$PY" -m venv .venv-serve
  fi
  .venv-serve/bin/python -m pip install -q --upgrade pip
  .venv-serve/bin/python -m pip install -q -c constraints-serve.txt -e ".[runtime,serve]"
  ruff check .
  python -m pytest -q
fi
