#!/bin/sh
# grandchildren.sh PIDFILE [setsid [daemon]]: starts a background child;
# with "setsid" one in a session of its own; with "daemon" a double-forked
# one in a session of its own, whose parent is gone at once. Records every
# pid in PIDFILE ("script", "parent", "child", "detached", "daemon" lines)
# once the detached ones are detached, says "ready", hangs.
pidfile=$1

# detached PID: waits until PID leads its own session (field 6 of its stat).
detached() {
	while [ -e "/proc/$1" ] && [ "$(cut -d' ' -f6 "/proc/$1/stat")" != "$1" ]; do
		sleep 0.01
	done
}

sleep 1000 &
{
	echo "script $$"
	echo "parent $PPID"
	echo "child $!"
} >"$pidfile.tmp"
if [ "$2" = setsid ]; then
	setsid sleep 1000 &
	echo "detached $!" >>"$pidfile.tmp"
	detached $!
fi
if [ "$3" = daemon ]; then
	(
		setsid sleep 1000 &
		echo "daemon $!" >>"$pidfile.tmp"
	)
	detached "$(sed -n 's/^daemon //p' "$pidfile.tmp")"
fi
mv "$pidfile.tmp" "$pidfile"
echo ready
echo "waiting forever" >&2
sleep 1000
