#!/bin/sh
# chatty.sh [PIDFILE]: records its pid in PIDFILE, then prints a row every
# 20 ms, forever.
if [ -n "$1" ]; then
	echo "script $$" >"$1.tmp" && mv "$1.tmp" "$1"
fi
i=0
while :; do
	i=$((i + 1))
	echo "u$i"
	sleep 0.02
done
