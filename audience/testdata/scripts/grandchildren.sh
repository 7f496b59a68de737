#!/bin/sh
# grandchildren.sh PIDFILE [setsid]: starts a background child (and, with
# "setsid", one in a session of its own), records every pid in PIDFILE
# ("script", "parent", "child", "detached" lines), says "ready", hangs.
pidfile=$1
sleep 1000 &
{
	echo "script $$"
	echo "parent $PPID"
	echo "child $!"
} >"$pidfile.tmp"
if [ "$2" = setsid ]; then
	setsid sleep 1000 &
	echo "detached $!" >>"$pidfile.tmp"
fi
mv "$pidfile.tmp" "$pidfile"
echo ready
echo "waiting forever" >&2
sleep 1000
