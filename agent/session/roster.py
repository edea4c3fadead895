"""Who is in a session and who hears a chat line, sans-I/O.

Invariants:

* The host CSR is always present; customers come and go.
* At most one customer is primary. The first customer to join becomes primary;
  later ones are secondary. When the primary leaves, the earliest remaining
  customer becomes primary. The CSR can make a secondary primary, and the old
  primary becomes secondary.
* A chat line reaches its named recipients (or everyone) and never its author.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.errors import LocalProtocolError
from agent.protocol.channel import Participant


def no_such_recipient(unknown: Iterable[str], people: Iterable[Participant]) -> LocalProtocolError:
    """The error for a line addressed to ids nobody here has, naming who is here."""
    here = ", ".join(f"{p.name} [{p.id}]" for p in people)
    return LocalProtocolError(
        f"no one in this session has the id {', '.join(unknown)}; people: {here}",
        code="unknown_recipient",
    )


class Roster:
    """The host's view of the session's participants, in join order."""

    def __init__(self, host: Participant) -> None:
        self._people: dict[str, Participant] = {host.id: host}
        self.host_id = host.id

    def __contains__(self, pid: str) -> bool:
        return pid in self._people

    def get(self, pid: str) -> Participant | None:
        return self._people.get(pid)

    @property
    def primary(self) -> str | None:
        return next((p.id for p in self._people.values() if p.primary), None)

    def snapshot(self) -> tuple[Participant, ...]:
        return tuple(self._people.values())

    def add(self, pid: str, name: str, role: str) -> Participant:
        """Add (or re-add, after a reconnect) a participant."""
        old = self._people.pop(pid, None)
        primary = role == "customer" and ((old is not None and old.primary) or self.primary is None)
        person = Participant(id=pid, name=name, role=role, primary=primary)
        self._people[pid] = person
        return person

    def remove(self, pid: str) -> Participant | None:
        """Remove a participant; promote the next customer if the primary left."""
        if pid == self.host_id:
            raise LocalProtocolError("the host cannot be removed from its own session")
        gone = self._people.pop(pid, None)
        if gone is not None and gone.primary:
            nxt = next((p for p in self._people.values() if p.role == "customer"), None)
            if nxt is not None:
                self._replace(nxt, primary=True)
        return gone

    def make_primary(self, pid: str) -> None:
        """Make customer ``pid`` primary; the old primary becomes secondary."""
        person = self._people.get(pid)
        if person is None or person.role != "customer":
            raise LocalProtocolError(f"{pid} is not a customer in this session")
        old = self.primary
        if old is not None and old != pid:
            self._replace(self._people[old], primary=False)
        self._replace(person, primary=True)

    def recipients(self, sender: str, to: tuple[str, ...] | None) -> list[str]:
        """Who receives a chat line from ``sender``; unknown ids are an error."""
        if to is None:
            return [pid for pid in self._people if pid != sender]
        unknown = [pid for pid in to if pid not in self._people]
        if unknown:
            raise no_such_recipient(unknown, self._people.values())
        return [pid for pid in dict.fromkeys(to) if pid != sender]

    def _replace(self, person: Participant, *, primary: bool) -> None:
        self._people[person.id] = Participant(person.id, person.name, person.role, primary)
