#!/usr/bin/env bash
# Creates .venv with the pinned packages and installs the system packages tfbnas uses.
# Usage: scripts/setup.sh [--test]   (--test also installs what the test suite needs: openssh-server)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

apt_packages=(dataset-fashion-mnist)
[ "${1:-}" = "--test" ] && apt_packages+=(openssh-server)
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
[ "${1:-}" = "--test" ] && [ ! -x /usr/sbin/sshd ] && missing+=(openssh-server)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    echo "setup: installing Debian packages with sudo: ${missing[*]}"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: no apt-get here: skipping ${missing[*]} (Fashion-MNIST then comes from tfds or --data_dir)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tfbnas-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp"; then
  echo "setup: installing pinned packages (requirements.txt)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -e .
  cp requirements.txt "$stamp"
fi
echo "setup: ready (.venv: $(.venv/bin/python --version))"
