"""The three kinds of failure a user can see, each with its exit code (PRODUCT.md section 3).

Library code raises these with a one-line message that names the offending key, file or
line; only `cli.py` turns them into an exit status.
"""


class MinimindError(Exception):
    """Something went wrong that the user can fix: exit code 1."""

    exit_code = 1


class UsageError(MinimindError):
    """The command line itself is wrong (bad version, unknown --set key): exit code 2."""

    exit_code = 2


class GateRefused(MinimindError):
    """A gate said no (unreviewed commit, danger guardrail, dirty snapshot): exit code 3."""

    exit_code = 3
