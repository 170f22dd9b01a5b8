"""The errors of models/: each carries a one-line message that names the file (or URL) and the fix.

They derive from ``ValueError`` so that callers outside the project can catch them without importing models, and
main.py turns them into a one-line CLI error.
"""

__all__ = ['CheckpointError', 'DownloadError']


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file/keys and the fix."""


class DownloadError(CheckpointError):
    """A file that could not be downloaded; the message is one line naming the URL and the way around it."""
