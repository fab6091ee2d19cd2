"""The exception type users see (a one-line reason that says what to do) and the warning type."""


class ItClustError(ValueError):
    """Bad input or a bad reference; the message is one line and names the fix."""


class ItClustWarning(UserWarning):
    """Something was assumed or left out that the user should know of; the message is one line. The result's
    provenance keeps it under ``"warnings"``."""
