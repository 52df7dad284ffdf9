#!/bin/bash
# Instructions per login: bench/instructions.sh with pgbench -C (a new connection per
# transaction), so one "transaction" is one SCRAM login (SSLRequest answered 'N', startup,
# SASL exchange, welcome), one extended-protocol SELECT and the disconnect.
#
# usage: bench/irlogin.sh [PORT]   (from the checkout to measure; needs valgrind, pgbench)
# env:   as bench/instructions.sh (GREENVISOR_DATA_DIR, VAULT_ENC_KEY, IR_USER, ...).
set -euo pipefail
here=$(dirname "$0")
"$here/instructions.sh" "${1:-6690}" 20 60 -C -c 1 -j 1 -S -M extended | sed 's/per transaction/per login/'
