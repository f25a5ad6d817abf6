"""Ticket states and the transitions mail may cause."""

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


# Where an agent (by mail or CLI) may move a ticket from each state. Closed is final for
# editors (their mail opens a new ticket); an agent may still reopen it.
AGENT_MOVES: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.OPEN, State.WAITING, State.RESOLVED, State.CLOSED}),
    State.OPEN: frozenset({State.WAITING, State.RESOLVED, State.CLOSED}),
    State.WAITING: frozenset({State.OPEN, State.RESOLVED, State.CLOSED}),
    State.RESOLVED: frozenset({State.OPEN, State.WAITING, State.CLOSED}),
    State.CLOSED: frozenset({State.OPEN}),
}


def refuse_move(old: State, new: State) -> str | None:
    """None if an agent may move a ticket from ``old`` to ``new`` (staying put is allowed),
    else the reason."""
    if old == new or new in AGENT_MOVES[old]:
        return None
    allowed = ", ".join(sorted(AGENT_MOVES[old])) or "nothing"
    return f"a {old} ticket cannot become {new} (from {old}: {allowed})"
