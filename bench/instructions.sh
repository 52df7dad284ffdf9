#!/bin/bash
# Instructions per pgbench transaction: the pooler's user-space instructions (valgrind
# callgrind) per transaction of the pgbench command given. Instruction counts do not drift
# with the CPU clock or other load, unlike wall time (docs/BENCHMARKS.md, "Instructions").
#
# usage: bench/instructions.sh PORT N1 N2 PGBENCH-ARGS...   (from the checkout to measure)
#   e.g. bench/instructions.sh 6690 20 60 -S -M extended -c 100 -j 2   # select, pool hand-offs
#        bench/instructions.sh 6690 300 1300 -S -M extended -c 1 -j 1  # one client (latency)
#        bench/irlogin.sh                                              # -C: one login each
# env:   GREENVISOR_DATA_DIR/VAULT_ENC_KEY of a metadata DB with a tenant whose user logs in
#        as $IR_USER (default app.t1) with password $IR_PASSWORD (default secret) to
#        database $IR_DB (default app).
# The pooler runs under callgrind; counters are zeroed after a warm-up (-t 5), dumped after
# -t N1 and after -t N2 (zeroed between): (N2-run - N1-run) / (clients x (N2 - N1)) cancels
# start-up, connection and dump costs. Config polling is slowed to once an hour so that it
# does not land in the window. Needs valgrind and pgbench.
set -euo pipefail
port=$1
n1=$2
n2=$3
shift 3
clients=$(grep -oP -- '-c \K[0-9]+' <<<"$*" || echo 1)
user=${IR_USER:-app.t1}
db=${IR_DB:-app}
export PGPASSWORD=${IR_PASSWORD:-secret}
out=$(mktemp -d /tmp/instructions.XXXXXX)
py=$(python -c "import sys; print(sys.executable)")  # not a pyenv shim: valgrind would trace it
valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$py" manage.py runpooler \
    --proxy-port-transaction "$port" --proxy-port-session $((port + 1)) \
    --http-port $((port + 2)) --internal-port $((port + 3)) --no-migrate \
    --config-poll-interval 3600 >"$out/log" 2>&1 &
vp=$!
trap 'kill $vp 2>/dev/null; wait $vp 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq 1 90); do
    sleep 2
    grep -q "serving" "$out/log" && break
done
run() {
    pgbench -h 127.0.0.1 -p "$port" -U "$user" "$db" -n -t "$1" "${@:2}" \
        >"$out/pgbench" 2>&1 || { cat "$out/pgbench"; exit 1; }
}
total() {
    callgrind_control -d $vp >/dev/null 2>&1
    sleep 1
    f=$(ls -t "$out"/cg.* | head -1)
    grep -E "^(summary|totals):" "$f" | head -1 | awk '{print $2}'
}
run 5 "$@"
callgrind_control -z $vp >/dev/null 2>&1
run "$n1" "$@"
a=$(total)
callgrind_control -z $vp >/dev/null 2>&1
run "$n2" "$@"
b=$(total)
echo "instructions per transaction: $(((b - a) / (clients * (n2 - n1))))"
