"""The one exception type for problems a user can fix (bad flag, bad path, bad file).

``main.py`` catches it (and ``models.CheckpointError``) at the top and prints the one-line message with a
non-zero exit status and no traceback. Raise it with a message that names the problem and the fix.
"""


class UserError(Exception):
    """An error caused by input the user controls; ``str(err)`` is a complete one-line explanation."""
