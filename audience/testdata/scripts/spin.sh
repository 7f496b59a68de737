#!/bin/sh
# spin.sh: prints one row, then spins on the CPU without a word.
echo u1
while :; do :; done
