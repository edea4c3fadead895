"""python -m agent: the peerdesk command."""

import sys

from agent.cli import main

sys.exit(main())
