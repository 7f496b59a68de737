#!/bin/sh
# Audience script example: a fixed VIP list as JSON Lines on stdout.
# stdout carries recipients (one JSON object per line; user_id required);
# stderr carries log lines. Users without a token are resolved through the
# server's token source (--token-source), or counted as no_token.
set -eu
echo "emitting the VIP list for automation ${PUSHBLASTER_AUTOMATION_NAME:-?}" >&2
printf '%s\n' \
  '{"user_id": "vip-1", "token": "vip-device-1", "platform": "ios", "tier": "gold"}' \
  '{"user_id": "vip-2", "token": "vip-device-2", "platform": "android", "tier": "platinum"}' \
  '{"user_id": "vip-3", "tier": "gold"}'
echo "3 VIPs" >&2
