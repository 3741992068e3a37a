"""Exception types: every error names the file, field, item or asset at fault."""

from __future__ import annotations


class Sar2ndviError(Exception):
    """Base class for errors this package raises on purpose (bad input, bad state)."""


class InputError(Sar2ndviError, ValueError):
    """An argument, file or recipe value is wrong; the message says which and how to fix it."""


class OutputExistsError(Sar2ndviError, FileExistsError):
    """An output location already holds something that would be overwritten."""


class ServerError(Sar2ndviError, RuntimeError):
    """A local service (the STAC API) could not be started or reached."""
