#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian packages
# via apt-get, only if missing), then runs every test. README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian packages that are not there yet, without letting their scripts start services.
need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # policy-rc.d exit 101: package scripts may not start system services (the tests start
  # what they need themselves, on 127.0.0.1). Removed again afterwards unless it was there.
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ "$had_policy" = 1 ] || $sudo rm -f /usr/sbin/policy-rc.d
}

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
command -v curl >/dev/null || need_apt curl ca-certificates
# A real Prometheus (and promtool) for the observability tests; run as a plain binary on
# 127.0.0.1 by the tests, never as a system service.
need_apt prometheus
# Real SIP peers for the telephony tests: Kamailio (with http_client and json) and sipp.
need_apt kamailio kamailio-utils-modules kamailio-json-modules sip-tester

# systemd-analyze verifies the shipped unit (packaging/leaseline.service); never started.
command -v systemd-analyze >/dev/null || need_apt systemd

# The OpenAPI test validates docs/openapi.json and the README's examples with Debian's python3
# and python3-jsonschema (tests/openapi_check.py).
need_apt python3 python3-jsonschema

# libfaketime: the clock tests run the real binary with its wall clock shifted (LD_PRELOAD).
need_apt faketime

# A 3-member etcd for the cluster test (tests/cluster.rs): plain `etcd` processes on 127.0.0.1,
# never the packaged service (policy-rc.d above keeps it from starting).
need_apt etcd-server

# The peer of the load benchmark (benches/load.rs, run briefly by the test suite).
need_apt redis-server

# A real browser for the drop-in script: Debian's Chromium, driven by playwright-core from npm
# (no browser download: it uses /usr/bin/chromium).
need_apt chromium
command -v node >/dev/null && command -v npm >/dev/null || need_apt nodejs npm
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi

# Tests that need an external program fail (rather than skip) when it is missing.
export LEASELINE_REQUIRE_EXTERNAL=1

cargo build --all-targets --locked
cargo test --all-targets --locked
