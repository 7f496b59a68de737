#!/bin/sh
# daemon.sh PIDFILE: leaves behind a double-forked daemon in a session of
# its own that keeps stdout open, records its pid, and exits 0 once the
# daemon is detached.
echo u1
(
	setsid sleep 1000 &
	echo "daemon $!" >"$1.tmp"
)
pid=$(cut -d' ' -f2 "$1.tmp")
# Wait until it leads its own session (field 6 of /proc/PID/stat).
while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f6 "/proc/$pid/stat")" != "$pid" ]; do
	echo "waiting for the daemon to detach" >&2
	sleep 0.01
done
mv "$1.tmp" "$1"
