#!/bin/bash
# User-space instructions per request of a server's processes, counted by callgrind: unlike CPU
# time, the count does not move with what else runs on the machine, so two builds compare within
# about 0.1 % (the same build gave the same count to the instruction twice).
#
#   benches/tools/instructions.sh hyperfork target/release/hyperfork [extra hyperfork args]
#   benches/tools/instructions.sh bare target/release/deps/http-<hash>    # the bench's bare pool
#
# It runs the server with one worker under `valgrind --tool=callgrind --trace-children=yes`, sends
# 2,000 and then, in a second run, 12,000 keep-alive requests (`h2load --h1 -c 8`) to `GET /`, and
# prints (I(12,000) - I(2,000)) / 10,000 over all the server's processes, so start-up cancels out.
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client). Kernel time is not counted.
set -u
if [ $# -lt 2 ]; then
  echo "usage: $0 hyperfork|bare BINARY [args]" >&2
  exit 2
fi
kind=$1
bin=$2
shift 2
extra=("$@")

run() {
  local n=$1 port out pid sum=0 t f
  port=$((20000 + RANDOM % 20000))
  out=$(mktemp -d)
  if [ "$kind" = bare ]; then
    HYPERFORK_BENCH_ROLE=bare HYPERFORK_BENCH_ADDR=127.0.0.1:$port HYPERFORK_BENCH_WORKERS=1 \
      valgrind -q --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p" \
      "$bin" 2>"$out/err" &
  else
    valgrind -q --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p" \
      "$bin" --host 127.0.0.1 --port "$port" --workers 1 --log-level warning "${extra[@]}" \
      2>"$out/err" &
  fi
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.3
  done
  h2load --h1 -n "$n" -c 8 -m 1 "http://127.0.0.1:$port/" 2>&1 | grep -E "^requests:" >&2
  kill -TERM "$pid"
  sleep 0.5
  pkill -TERM -P "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  sleep 1
  for f in "$out"/cg.*; do
    t=$(grep -E "^(summary|totals):" "$f" | tail -1 | awk '{print $2}')
    [ -n "$t" ] && sum=$((sum + t))
  done
  [ "$sum" -lt 5000000 ] && cat "$out/err" >&2
  rm -rf "$out"
  echo "$sum"
}

a=$(run 2000)
b=$(run 12000)
echo "$kind: $(((b - a) / 10000)) instructions per request (2,000 requests: $a; 12,000: $b)"
