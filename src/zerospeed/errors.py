"""Error types every layer raises, so users can catch one class per kind of failure."""


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range.

    Messages name the key path, the value given and what is allowed. Raised before any
    collective so that every rank fails the same way instead of one rank hanging.
    """


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found, verified or loaded."""


class CommError(RuntimeError):
    """A collective failed or timed out; the message names the rank and the op."""


class EngineError(RuntimeError):
    """The engine was used in a way that cannot work (wrong order of calls, new params...)."""
