"""Errors shared by every stage."""


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what to do. The CLI prints it without a traceback."""
