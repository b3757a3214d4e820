"""The command rules live in :mod:`qcompute._command`, shared with the SDK (batch files check
their commands with the same parser, offline); this module keeps the server's import path."""
from qcompute._command import INSTANCE_VARIABLES, CommandError, check_command, expand, split_command

__all__ = ["CommandError", "expand", "split_command", "check_command", "INSTANCE_VARIABLES"]
