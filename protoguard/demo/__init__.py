"""The label-loop demo (``protoguard demo``): the real components driven round by round.

Kept out of ``cli/`` because it is an application of its own (a dataset split, a simulated
analyst, a report), not a command-line concern; the CLI only parses its flags.
"""
from __future__ import annotations

__all__: list[str] = []
