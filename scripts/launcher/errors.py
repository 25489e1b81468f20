"""The launcher's two failures: one the user can act on, and a server that does not answer."""

from __future__ import annotations


class CtlError(Exception):
    """A failure whose message says what to do next."""


class ServerDown(CtlError):
    """Nothing answers at the address."""
