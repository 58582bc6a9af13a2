"""Sub-commands of the ``medtwin`` command line, one Typer app per group (``medtwin audit ...``)."""

from __future__ import annotations

import getpass


def operator() -> str:
    """The audit actor of a command-line operation: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"
