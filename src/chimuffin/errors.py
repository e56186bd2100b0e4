"""One exception type for problems a user can fix: bad params, bad files, bad rows.

Entry points catch it and print its message without a traceback (exit code 2).
"""


class UserError(Exception):
    """A problem in the user's input that names the file, row or key at fault."""
