"""PeerDesk agent: the program that runs on every machine in a support session."""

__version__ = "0.1.0"
