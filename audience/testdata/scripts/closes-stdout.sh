#!/bin/sh
# closes-stdout.sh: writes a row, closes stdout, works on, then fails.
echo u1
exec >&-
sleep 0.3
echo "failed after closing stdout" >&2
exit 4
