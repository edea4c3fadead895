"""``python -m signaling [--host H]... [--port N]``: run the signaling server."""

import sys

from signaling.server import main

sys.exit(main())
