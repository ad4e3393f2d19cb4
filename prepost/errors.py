"""What the `prepost` command tells its caller, and with which exit code.

Exit codes (README, "Exit codes"): 0 done; 1 a run (or a simulated one) did not succeed;
2 the command line or an input file cannot be used; 3 AWS could not be reached or said
no (no region, no credentials, refused, not found); 70 a bug in prepost itself.
"""

from __future__ import annotations

EXIT_NOT_SUCCEEDED = 1
EXIT_USAGE = 2
EXIT_AWS = 3
EXIT_INTERNAL = 70


class CliError(Exception):
    """Something the operator must fix; the message is one sentence saying what."""

    exit_code = EXIT_AWS


class UsageError(CliError):
    """A bad option value or an input file that cannot be used."""

    exit_code = EXIT_USAGE


class AwsError(CliError):
    """AWS could not be reached, or refused, or has no such thing."""

    exit_code = EXIT_AWS
