"""The error every layer raises for a configuration it refuses; the scripts print it as one line (exit code 2)."""


class ConfigError(ValueError):
    """A configuration key or value that is not allowed."""
