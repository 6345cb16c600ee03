#!/bin/sh
# make run: tq-host and 4 workers in the foreground (no root, no systemd), state under DIR.
# Submits task-1 once the workers are live, prints its result, then serves until Ctrl-C (or SIGTERM: exit 0).
# Stops with status 1 if tq (its host, or a worker 1-4) already runs on DIR, or its host or a worker does not start.
# Says so when its tq-host exits; the workers wait for a tq-host started again by hand, which Ctrl-C then stops.
set -eu
dir=${1:-.tq}
BIN=${BIN:-.venv/bin}
config=$(scripts/local-config.sh "$dir")
tqctl() { "$BIN/tqctl" --config "$config" "$@"; }
host="" workers=""
stop() {  # workers first (they hand their jobs back to the host), then the host, as systemd orders it
    trap - INT TERM EXIT
    if [ -n "$workers" ]; then kill -TERM $workers 2>/dev/null || true; wait $workers || true; fi
    if [ -n "$host" ]; then kill -TERM $host 2>/dev/null || true; wait $host || true; else stop_other_host; fi
    echo "tq stopped; state kept in $dir/state"
    "$BIN/python3" -m tq.localqueues held "$config" || true
}
stop_other_host() {  # a tq-host started by hand after make run's own exited
    pid=$(tqctl status --json 2>/dev/null | "$BIN/python3" -c 'import json, sys; print(json.load(sys.stdin)["pid"])' \
          2>/dev/null) || return 0
    if ! kill -TERM "$pid" 2>/dev/null; then
        echo "make run: tq-host (pid $pid) answers on $dir/tq.sock and was not stopped" >&2
        return 0
    fi
    i=0
    while tqctl status >/dev/null 2>&1 && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.3; done  # (not its parent)
    if [ $i -lt 100 ]; then echo "make run: stopped tq-host (pid $pid), started by hand on $dir"
    else echo "make run: tq-host (pid $pid), started by hand on $dir, still answers 30s after kill -TERM" >&2; fi
}
fail() {  # what did not start, and stop what did
    echo "make run: $1" >&2
    stop >&2
    exit 1
}

if tqctl status >/dev/null 2>&1; then  # (its own tq-host would refuse the store; its workers would double)
    echo "make run: tq is already running on $dir (its socket answers): stop that one first" >&2
    exit 1
fi
status=0
"$BIN/python3" -m tq.localqueues running "$config" || status=$?  # e.g. a worker 1 started by hand on this config
case $status in
    0) ;;
    3) echo "make run: tq already runs on $dir (above): stop that first" >&2; exit 1 ;;
    *) echo "make run: could not check for workers of $dir left running (above); starting anyway" >&2 ;;
esac
trap 'stop; exit 0' INT TERM  # a requested stop, not a failure
trap stop EXIT

# setsid: Ctrl-C reaches this script only, which stops the daemons in order.
setsid "$BIN/tq-host" --config "$config" & host=$!
i=0
until tqctl status >/dev/null 2>&1; do
    kill -0 $host 2>/dev/null || { wait $host || true; host=""; fail "tq-host did not start; see above"; }
    i=$((i + 1)); [ $i -lt 100 ] || fail "tq-host did not answer within 10s; see above"
    sleep 0.1
done
for n in 1 2 3 4; do setsid "$BIN/tq-worker" --config "$config" $n & workers="$workers $!"; done
# The demo job goes once every worker is live (before their hello the host has no worker for `default`).
i=0
until tqctl workers --json | "$BIN/python3" -c 'import json, sys
live = {w["pid"] for w in json.load(sys.stdin) if w["state"] == "live"}
sys.exit(not live.issuperset(int(p) for p in sys.argv[1:]))' $workers; do
    for pid in $workers; do
        kill -0 $pid 2>/dev/null || fail "a tq-worker (pid $pid) did not start; see above"
    done
    i=$((i + 1)); [ $i -lt 100 ] || fail "the workers were not live within 10s; see above"
    sleep 0.1
done

tqctl submit --wait task-1
cat <<MSG

tq is running (host + 4 workers). From another shell:
    export TQ_CONFIG=$config
    $BIN/tqctl submit --wait hello world
    $BIN/tqctl status; $BIN/tqctl list; $BIN/tqctl workers
Ctrl-C (or kill -TERM $$) stops it.
MSG
status=0
wait $host || status=$?  # (Ctrl-C and kill -TERM end the script in its trap)
echo "make run: tq-host (pid $host) exited with status $status; the workers wait for it (no job is lost):" \
     "start it again from another shell, $BIN/tq-host --config $config, or press Ctrl-C (kill -TERM $$)" >&2
host=""
wait
