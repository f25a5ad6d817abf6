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
