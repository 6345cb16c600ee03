#!/bin/sh
# make run: tq-host and 4 workers in the foreground (no root, no systemd), state under DIR.
# Submits task-1, prints its result, then serves until Ctrl-C.
set -eu
dir=${1:-.tq}
BIN=${BIN:-.venv/bin}
config=$(scripts/local-config.sh "$dir")
host="" workers=""
stop() {  # workers first (they hand their jobs back to the host), then the host, as systemd orders it
    trap - INT TERM EXIT
    [ -n "$workers" ] && kill -TERM $workers 2>/dev/null && wait $workers
    [ -n "$host" ] && kill -TERM $host 2>/dev/null && wait $host
    echo "tq stopped; state kept in $dir/state"
}
trap stop INT TERM EXIT

# setsid: Ctrl-C reaches this script only, which stops the daemons in order.
setsid "$BIN/tq-host" --config "$config" & host=$!
i=0
until "$BIN/tqctl" --config "$config" status >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "tq-host did not start; see above" >&2; exit 1; }
    sleep 0.1
done
for n in 1 2 3 4; do setsid "$BIN/tq-worker" --config "$config" $n & workers="$workers $!"; done

"$BIN/tqctl" --config "$config" submit --wait task-1
cat <<MSG

tq is running (host + 4 workers). From another shell:
    export TQ_CONFIG=$config
    $BIN/tqctl submit --wait hello world
    $BIN/tqctl status; $BIN/tqctl list; $BIN/tqctl workers
Ctrl-C stops it.
MSG
wait
