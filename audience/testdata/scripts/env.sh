#!/bin/sh
# env.sh: prints its whole environment (no PATH needed).
exec /usr/bin/env
