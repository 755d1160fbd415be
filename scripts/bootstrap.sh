#!/usr/bin/env bash
# Installs what pagefault-inspector and its tests need on a fresh Debian machine (as root):
# Debian's perf, bpftrace, Prometheus, Alertmanager, node-exporter, Chromium, a C compiler,
# and a virtualenv (.venv) with the package and its test extras. Idempotent and quiet.
# A package it cannot install makes the tests that need it skip, saying so; under CI=true it fails
# instead (exit 1): CI must not pass on a machine that cannot run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
want_debs=(linux-perf bpftrace gcc libc6-dev prometheus prometheus-alertmanager prometheus-node-exporter chromium util-linux procps openssl)
ci=false
case "${CI:-}" in true|TRUE|True|1|yes) ci=true;; esac
not_installed() {
  local p out=()
  for p in "${want_debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  echo "${out[*]}"
}
read -r -a missing <<< "$(not_installed)"
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || echo "bootstrap: apt-get update failed; trying the install anyway"
  # One by one, so a package this machine's archive lacks does not stop the others. Debian starts
  # the packaged daemons on install; the tests start their own on loopback ports, so each one is
  # stopped (and disabled) right after its install, through its service unit only.
  for p in "${missing[@]}"; do
    if ! apt-get install -y -q --no-install-recommends "$p" >/dev/null 2>&1; then
      echo "bootstrap: could not install $p"
      continue
    fi
    case "$p" in
      prometheus|prometheus-alertmanager|prometheus-node-exporter)
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
          systemctl disable --now "$p.service" >/dev/null 2>&1 || echo "bootstrap: could not stop $p.service"
        else
          service "$p" stop >/dev/null 2>&1 || true
        fi;;
    esac
  done
fi
read -r -a still <<< "$(not_installed)"
if [ ${#still[@]} -gt 0 ]; then
  if $ci; then
    echo "bootstrap: FAILED under CI=true: not installed: ${still[*]} (the tests that need them would only skip)" >&2
    exit 1
  fi
  echo "bootstrap: not installed: ${still[*]}: the tests that need them skip, saying so (under CI=true this fails)"
fi
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
