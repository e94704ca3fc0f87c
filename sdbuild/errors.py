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


def describe_config_error(exc: BaseException) -> str:
    """One line naming the key and, where known, the allowed values (Hydra/OmegaConf errors)."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        if group:
            return f"{group}={choice}: no such option; choose one of: {', '.join(exc.options or [])}"
        return f"config '{choice}' not found"
    cause = exc
    while cause.__cause__ is not None and not hasattr(cause, "full_key"):
        cause = cause.__cause__
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    key = getattr(cause, "full_key", None)
    return f"{key}: {message}" if key and key not in message else message
