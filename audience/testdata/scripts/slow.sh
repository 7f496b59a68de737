#!/bin/sh
# slow.sh: slow but alive: a row every 200 ms for about 1.5 s, progress on stderr.
echo user_id
for i in 1 2 3 4 5 6 7; do
	echo "u$i"
	echo "progress $i" >&2
	sleep 0.2
done
