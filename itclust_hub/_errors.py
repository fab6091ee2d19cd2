"""The one exception type users see: a one-line reason that says what to do."""


class ItClustError(ValueError):
    """Bad input or a bad reference; the message is one line and names the fix."""
