"""One AsyncInstructorClient per event loop, for adapters whose async methods may run under several loops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from instructor_client.client import AsyncInstructorClient


class AsyncClientPerLoop:
    """Hands out an AsyncInstructorClient bound to the running loop.

    An httpx.AsyncClient's connections belong to the loop that opened them, and frameworks call async
    methods from fresh loops (``asyncio.run`` per call, notebooks), so a client is made per loop.
    """

    def __init__(self, url: str | Sequence[str], model: str, options: dict[str, Any]) -> None:
        self._args = (url, model, options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncInstructorClient | None = None

    def get(self) -> AsyncInstructorClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            url, model, options = self._args
            self._client, self._loop = AsyncInstructorClient(url, model, **options), loop
        return self._client
