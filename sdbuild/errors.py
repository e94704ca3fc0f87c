"""One error type for everything a user can fix: the message names the problem and the fix."""


class SdbuildError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    ``hint`` says what to do about it; the CLI prints ``error: <message> (<hint>)`` and exits 2
    without a traceback.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

