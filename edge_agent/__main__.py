"""``python -m edge_agent [run flags]`` = ``hadmc-agent run`` (settings from ``HADMC_AGENT_*``)."""

import sys

from edge_agent.cli import main

args = sys.argv[1:]
if not args or args[0].startswith("-"):
    args = ["run", *args]
sys.exit(main(args))
