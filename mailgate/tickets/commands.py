"""Agent commands by mail: lines at the top of an agent's mail that start with '#'.

    #note            the mail is an internal note: recorded, never sent to the editor
    #status STATE    new state: open, waiting, resolved or closed
    #resolve         same as #status resolved;  #close: #status closed

Whatever follows the command lines is the answer relayed to the editor (unless #note).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.tickets.states import State

_ALIASES = {"resolve": State.RESOLVED, "close": State.CLOSED, "reopen": State.OPEN,
            "wait": State.WAITING}


class CommandError(ValueError):
    """An agent's command line is not understood; the text says which."""


@dataclass(frozen=True)
class AgentCommand:
    note: bool
    state: State | None
    text: str          # the rest of the mail, after the command lines


def parse_command(text: str) -> AgentCommand | None:
    lines = text.strip().splitlines()
    note, state, used = False, None, 0
    for line in lines:
        if not is_command_line(line):
            break
        stripped = line.strip()
        used += 1
        word, _, arg = stripped[1:].strip().partition(" ")
        word, arg = word.lower(), arg.strip().lower()
        if word == "note":
            note = True
        elif word == "status":
            try:
                state = State(arg)
            except ValueError as exc:
                names = ", ".join(s.value for s in State if s != State.NEW)
                raise CommandError(f"#status {arg!r}: use one of {names}") from exc
        else:
            state = _ALIASES[word]
    if used == 0:
        return None
    return AgentCommand(note=note, state=state, text="\n".join(lines[used:]).strip())


def is_command_line(line: str) -> bool:
    return bool(re.match(r"\s*#(note|status|resolve|close|reopen|wait)\b", line, re.I))
