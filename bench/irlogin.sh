#!/bin/bash
# Instructions per login: the pooler's user-space instructions (valgrind callgrind) per
# pgbench -C transaction, i.e. per SCRAM login + one extended-protocol SELECT + disconnect.
# Instruction counts do not drift with the CPU clock or other load, unlike wall time.
#
# usage: bench/irlogin.sh [PORT]   (from the checkout to measure; needs valgrind, pgbench)
# env:   GREENVISOR_DATA_DIR/VAULT_ENC_KEY of a metadata DB with a tenant whose user logs in
#        as $IR_USER (default app.t1) with password $IR_PASSWORD (default secret) to
#        database $IR_DB (default app).
# The pooler runs under callgrind; counters are zeroed after a warm-up, dumped after 20
# and after 60 more logins (zeroed between): (60-run - 20-run) / 40 cancels start-up and
# dump costs. Config polling is slowed to once an hour so it does not land in the window.
set -euo pipefail
port=${1:-6690}
user=${IR_USER:-app.t1}
db=${IR_DB:-app}
export PGPASSWORD=${IR_PASSWORD:-secret}
out=$(mktemp -d /tmp/irlogin.XXXXXX)
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
    pgbench -h 127.0.0.1 -p "$port" -U "$user" "$db" -C -c 1 -j 1 -S -M extended -n -t "$1" \
        >"$out/pgbench" 2>&1 || { cat "$out/pgbench"; exit 1; }
}
total() {
    callgrind_control -d $vp >/dev/null 2>&1
    sleep 1
    f=$(ls -t "$out"/cg.* | head -1)
    grep -E "^(summary|totals):" "$f" | head -1 | awk '{print $2}'
}
run 5
callgrind_control -z $vp >/dev/null 2>&1
run 20
a=$(total)
callgrind_control -z $vp >/dev/null 2>&1
run 60
b=$(total)
echo "instructions per login: $(((b - a) / 40))"
