#!/bin/sh
# exit.sh CODE: a row and two stderr lines, then exits with CODE.
echo u1
echo "connecting to the warehouse" >&2
echo "fatal: warehouse unreachable" >&2
exit "$1"
