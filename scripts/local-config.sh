#!/bin/sh
# Write a config for running tq in the foreground under DIR (no root, no systemd): make run uses it.
set -eu
dir=$(realpath -m "${1:-.tq}")
mkdir -p "$dir"
cat > "$dir/tq.toml" <<CONF
[host]
state_dir = "$dir/state"
socket = "$dir/tq.sock"
lease = "5s"

[mqueue]
prefix = "/tq-$(id -u)-$(printf %s "$dir" | cksum | cut -d' ' -f1)"
max_messages = 10

[tasks."#"]
handler = "echo"
CONF
echo "$dir/tq.toml"
