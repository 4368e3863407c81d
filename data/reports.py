"""How the data package tells what it left out: a DataError when nothing usable is left, else one line a kind.

A run over a million files must not print a million lines, nor stop for one bad file: every reader
collects what it skipped by reason, and these helpers print one summary line per reason.
"""

SHOWN_NAMES = 3  # files named in a summary line; the rest are counted


class DataError(RuntimeError):
    """Data that cannot be used (missing folder, nothing valid, failed download); str(e) is one line."""


def summary(message, names, marker="[!]"):
    """Print `marker message: first, second, third and N more`."""
    shown = ", ".join(str(name) for name in names[:SHOWN_NAMES])
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    print(f"{marker} {message}: {shown}{more}")


def report_skipped(skipped, directory):
    """One line per reason of a {reason: [file name, ...]} dict."""
    for reason, names in skipped.items():
        summary(f"Skipped {len(names)} files in {directory} ({reason})", names)
