#!/bin/sh
# longline.sh: a 10000-byte stderr line, then a short one.
head -c 10000 /dev/zero | tr '\0' x >&2
echo >&2
echo short >&2
