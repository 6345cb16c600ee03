#!/bin/sh
# make clean's first step: remove the POSIX message queues of make run's DIR (they are charged to your
# RLIMIT_MSGQUEUE until removed, and their names come from DIR's path: once DIR is gone nothing names them).
# Stops with status 1, removing nothing, while a daemon of DIR still runs. Nothing to do without DIR/tq.toml.
set -eu
dir=${1:-.tq}
BIN=${BIN:-.venv/bin}
[ -f "$dir/tq.toml" ] || exit 0
if [ ! -x "$BIN/python3" ]; then
    echo "make clean: no $BIN/python3 to remove the queues of $dir with: they stay (ls /dev/mqueue)" >&2
    exit 0
fi
status=0
"$BIN/python3" -m tq.localqueues remove "$dir/tq.toml" || status=$?
case $status in
    0) ;;
    3) echo "make clean: tq still runs on $dir (above): stop it first (Ctrl-C of its make run); nothing removed" >&2
       exit 1 ;;
    *) echo "make clean: could not check or remove the queues of $dir (above): nothing removed" >&2
       exit 1 ;;
esac
