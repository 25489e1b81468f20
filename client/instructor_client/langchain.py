"""LangChain ``Embeddings`` backed by a served INSTRUCTOR model: a drop-in for HuggingFaceInstructEmbeddings.

    # before: HuggingFaceInstructEmbeddings(model_name="hkunlp/instructor-large")
    from instructor_client.langchain import InstructorEmbeddings
    embeddings = InstructorEmbeddings(url="http://127.0.0.1:8080", model="instructor-large", key_file="key_file.json")

Same defaults and the same pairs as LangChain's class: ``embed_documents`` embeds
``[embed_instruction, text]``, ``embed_query`` ``[query_instruction, text]``; the text is sent unchanged.
Needs the ``langchain`` extra (langchain-core).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import Embeddings

from instructor_client import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from instructor_client._per_loop import AsyncClientPerLoop
from instructor_client.client import DEFAULT_MODEL, DEFAULT_URL, AsyncInstructorClient, InstructorClient


class InstructorEmbeddings(Embeddings):
    """Embeddings from an instructor-serve endpoint (sync and native async).

    ``url``, ``model``, ``token`` / ``key_file`` and ``**client_options`` (timeout, max_retries,
    batch_size, concurrency, ...) go to InstructorClient / AsyncInstructorClient.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, *,
                 token: str | None = None, key_file: str | None = None,
                 embed_instruction: str = DEFAULT_EMBED_INSTRUCTION,
                 query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
                 show_progress: bool = False, **client_options: Any) -> None:
        self.embed_instruction = embed_instruction
        self.query_instruction = query_instruction
        self.show_progress = show_progress
        options = dict(token=token, key_file=key_file, **client_options)
        self._client = InstructorClient(url, model, **options)
        self._async = AsyncClientPerLoop(url, model, options)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``[embed_instruction, text]`` for each text, in order."""
        return self._client.embed([(self.embed_instruction, t) for t in texts], progress=self.show_progress)

    def embed_query(self, text: str) -> list[float]:
        """The vector of ``[query_instruction, text]``."""
        return self._client.embed_one(self.query_instruction, text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_documents`` over httpx's AsyncClient (no thread executor)."""
        return await self._aclient().embed([(self.embed_instruction, t) for t in texts], progress=self.show_progress)

    async def aembed_query(self, text: str) -> list[float]:
        """Async ``embed_query``."""
        return await self._aclient().embed_one(self.query_instruction, text)

    def _aclient(self) -> AsyncInstructorClient:
        return self._async.get()
