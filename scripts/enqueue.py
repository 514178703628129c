#!/usr/bin/env python3
"""Enqueue an agent invocation or a maintenance job by hand; see `--help`.

Same as `python -m agent_service enqueue ...`. Reads REDIS_URL (or var/redis.url written by
`dev`) and DATABASE_PATH like the service does.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from agent_service.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["enqueue", *sys.argv[1:]]))
