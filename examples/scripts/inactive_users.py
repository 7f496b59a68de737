#!/usr/bin/env python3
"""Audience script example: users inactive for N days, as CSV on stdout.

pushblaster runs this from its scripts directory with a clean environment
and these arguments (from the automation's "args"). The contract:

  * stdout: recipients, CSV with a header (or JSON Lines). user_id is
    required; token, platform (android|ios|web), timezone and locale are
    optional; every other column becomes per-recipient template data.
  * stderr: log lines. Every line shows up in the execution's events, and
    pushblaster counts any output as a sign of life: a script silent on both
    streams for stall_timeout is killed as stalled.
  * exit 0 on success; exit 75 means "temporary failure, retry later".
"""
import csv
import os
import sys
import time

days = int(sys.argv[1]) if len(sys.argv) > 1 else 30
execution = os.environ.get("PUSHBLASTER_EXECUTION_ID", "?")
print(f"selecting users inactive for {days} days (execution {execution})", file=sys.stderr, flush=True)

writer = csv.writer(sys.stdout)
writer.writerow(["user_id", "token", "platform", "timezone", "locale", "first_name"])
for i in range(1, 1001):
    writer.writerow([f"user-{i}", f"device-token-{i}", "android" if i % 2 else "ios", "Europe/Berlin", "de-DE", f"Name{i}"])
    if i % 250 == 0:
        sys.stdout.flush()
        # A progress line on stderr keeps the stall detector calm during
        # long queries, and reads well in the execution's events.
        print(f"{i} users so far", file=sys.stderr, flush=True)
        time.sleep(0.05)
print("done", file=sys.stderr)
