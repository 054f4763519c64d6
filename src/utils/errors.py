"""The one exception type for bad user input, so the CLI can print it as a single line."""


class UserInputError(ValueError):
    """Bad config value, data or path. The message names the value and the fix; no traceback is shown."""
