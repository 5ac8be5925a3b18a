"""User-facing errors: problems the user can fix, reported as one line.

`stage.stage_main` turns a `UserError` into `error: <message>` on stderr and
exit status 2, with no traceback.
"""


class UserError(Exception):
    """An error caused by input the user controls; its message says how to fix it."""
