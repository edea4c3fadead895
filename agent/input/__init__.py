"""Remote input on the customer's desktop: pynput driven from one worker thread.

``Injector`` runs the actions that ``agent.session.control.ControlArbiter`` lets
through; ``Monitor`` maps their normalised coordinates to the shared monitor.
"""

from agent.input.injector import PYNPUT_KEYS, Backend, Injector, Monitor, PynputBackend

__all__ = ["PYNPUT_KEYS", "Backend", "Injector", "Monitor", "PynputBackend"]
