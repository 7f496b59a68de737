#!/bin/sh
# stall.sh: prints one row, then hangs without a word (and without CPU).
echo u1
sleep 1000
