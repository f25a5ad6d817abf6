"""Ticket states and the one table of transitions between them.

new → open → waiting (on the editor) → resolved → closed, and back: an editor's reply puts a
waiting or resolved ticket back to open, an agent may reopen. Who may cause which move is the
caller's business (agents by mail or CLI, an editor's mail, the sweep); that a move exists at
all is this table's.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    NEW = "new"            # made, no agent has answered yet
    OPEN = "open"          # an agent is on it
    WAITING = "waiting"    # waiting for the editor (information asked)
    RESOLVED = "resolved"  # handled; closes by itself after the quiet period
    CLOSED = "closed"      # final: a later mail opens a new, linked ticket


def after_requester_mail(state: State) -> State:
    """An editor's follow-up puts a waiting or resolved ticket back in the agents' court."""
    if state in (State.WAITING, State.RESOLVED):
        return State.OPEN
    return state


class IllegalTransition(ValueError):
    """A move the transition table does not have; the text says which and what is allowed."""


# Every move a ticket can make. Closed is final for editors (their mail opens a new, linked
# ticket); only an agent reopens it.
MOVES: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.OPEN, State.WAITING, State.RESOLVED, State.CLOSED}),
    State.OPEN: frozenset({State.WAITING, State.RESOLVED, State.CLOSED}),
    State.WAITING: frozenset({State.OPEN, State.RESOLVED, State.CLOSED}),
    State.RESOLVED: frozenset({State.OPEN, State.WAITING, State.CLOSED}),
    State.CLOSED: frozenset({State.OPEN}),
}


def refuse_move(old: State, new: State) -> str | None:
    """None if a ticket may move from ``old`` to ``new`` (staying put is allowed), else the
    reason, fit to be mailed back to an agent."""
    if old == new or new in MOVES[old]:
        return None
    allowed = ", ".join(sorted(MOVES[old])) or "nothing"
    return f"a {old} ticket cannot become {new} (from {old}: {allowed})"
