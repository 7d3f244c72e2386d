"""The one base of every error fedtune reports to a user as a single line."""

from __future__ import annotations


class FedtuneError(Exception):
    """A problem the user can fix (bad scenario, data, model, run directory, ...); its
    message is one line naming it. `fedtune` prints it and exits with `exit_code`."""

    exit_code = 2
