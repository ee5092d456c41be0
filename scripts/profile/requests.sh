#!/usr/bin/env bash
# Server CPU per request, as the performance notes quote it: starts a release binary on a fresh
# store (a 400,000-number pool, like the load bench), drives 50 keep-alive connections of
# allocations then of attribution lookups with wrk (Debian's `wrk`, installed if missing), and
# prints requests/s and the server's CPU time (user + system, from /proc) per request. With
# PERF=1 it also records a profile of each phase (`perf record -g`, Debian's linux-perf) into
# the work folder. Usage: scripts/profile/requests.sh [BINARY] (default target/release/leaseline).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/leaseline}"
secs="${SECS:-5}"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
work="$(mktemp -d)"
port=18080
python3 - "$work" "$port" <<'PY'
import hashlib, sys
work, port = sys.argv[1], sys.argv[2]
sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
open(f"{work}/pool.toml", "w").write(f'''[server]
listen = "127.0.0.1:{port}"
data_dir = "{work}/data"
[lease]
ttl = "1h"
max_ttl = "2h"
[[pool]]
name = "p"
numbers = ["+33800000000..=+33800399999"]
[[key]]
name = "site"
role = "site"
sha256 = "{sha("bench-site-key")}"
[[key]]
name = "tel"
role = "telephony"
sha256 = "{sha("bench-telephony-key")}"
''')
PY
LEASELINE_LOG=warn "$bin" serve --config "$work/pool.toml" >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
for phase in alloc lookup; do
  perf_pid=
  if [ "${PERF:-0}" = 1 ]; then
    perf record -F 1999 -g -p "$pid" -o "$here/$phase.perf.data" -- sleep "$secs" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  c0=$(cpu)
  out=$(wrk -t1 -c50 -d"${secs}s" -s "$here/$phase.lua" "http://127.0.0.1:$port")
  c1=$(cpu)
  [ -z "$perf_pid" ] || wait "$perf_pid"
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "$phase: $rps req/s, $(python3 -c "print(round(($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / $n, 1))") µs server CPU per request"
done
grep VmRSS "/proc/$pid/status"
