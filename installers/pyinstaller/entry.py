"""Entry point of the PyInstaller builds: the ``peerdesk`` command.

macOS hands a clicked ``peerdesk://`` link to the app as an Apple Event, which
PyInstaller's ``argv_emulation`` turns into a lone argument; a lone link is taken
as ``join -- LINK`` (and parsed as strictly as any other).
"""

import multiprocessing
import sys

from agent.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    args = sys.argv[1:]
    if len(args) == 1 and args[0].lower().startswith("peerdesk:"):
        args = ["join", "--", args[0]]
    sys.exit(main(args))
