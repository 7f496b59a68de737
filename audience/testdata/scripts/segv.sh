#!/bin/sh
# segv.sh: dies of SIGSEGV, by its own hand (no core file).
ulimit -c 0 2>/dev/null
echo u1
echo "about to crash" >&2
kill -SEGV $$
