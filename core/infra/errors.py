"""Errors that carry a message meant for a user (the CLI prints it as one line, the app as a banner)."""


class TMAError(Exception):
    """Base class: the message is complete and user-facing."""


class ModelUnavailableError(TMAError):
    """The model cannot be loaded: unknown id, unreachable hub, missing files."""


class InputError(TMAError):
    """The text or the settings cannot be analysed as given."""
