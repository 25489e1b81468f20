"""LlamaIndex ``BaseEmbedding`` backed by a served INSTRUCTOR model, in place of
llama-index-embeddings-instructor's ``InstructorEmbedding`` (which loads the model in-process).

    from instructor_client.llama_index import InstructorEmbedding
    Settings.embed_model = InstructorEmbedding(url="http://127.0.0.1:8080", model_name="instructor-base",
                                               key_file="key_file.json")

Defaults as llama-index-embeddings-instructor gives hkunlp/instructor-* models: ``query_instruction`` and
``text_instruction`` None mean "Represent the question for retrieving supporting documents: " and
"Represent the document for retrieval: "; ``embed_batch_size=10``. One difference: upstream picks those
defaults only when ``model_name`` is an hkunlp/instructor-* Hub id; here ``model_name`` is the name the
server serves the model under, so the defaults always apply (pass ``""`` for no instruction).
Needs the ``llama-index`` extra (llama-index-core).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from instructor_client import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from instructor_client._per_loop import AsyncClientPerLoop
from instructor_client.client import DEFAULT_MODEL, DEFAULT_URL, InstructorClient


class InstructorEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an instructor-serve endpoint (sync and native async)."""

    url: str = Field(default=DEFAULT_URL, description="Base URL of the server (TorchServe inference API).")
    query_instruction: str | None = Field(default=None, description="Instruction for queries.")
    text_instruction: str | None = Field(default=None, description="Instruction for documents (nodes).")

    _client: InstructorClient = PrivateAttr()
    _async: AsyncClientPerLoop = PrivateAttr()

    def __init__(self, url: str = DEFAULT_URL, model_name: str = DEFAULT_MODEL, *,
                 query_instruction: str | None = None, text_instruction: str | None = None,
                 embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE, token: str | None = None,
                 key_file: str | None = None, callback_manager: Any = None, **client_options: Any) -> None:
        super().__init__(url=url, model_name=model_name, query_instruction=query_instruction,
                         text_instruction=text_instruction, embed_batch_size=embed_batch_size,
                         callback_manager=callback_manager)
        options = dict(token=token, key_file=key_file, **client_options)
        self._client = InstructorClient(url, model_name, **options)
        self._async = AsyncClientPerLoop(url, model_name, options)

    @classmethod
    def class_name(cls) -> str:
        return "InstructorServeEmbedding"

    def _query_pair(self, query: str) -> tuple[str, str]:
        instruction = DEFAULT_QUERY_INSTRUCTION if self.query_instruction is None else self.query_instruction
        return (instruction, query)

    def _text_pair(self, text: str) -> tuple[str, str]:
        instruction = DEFAULT_EMBED_INSTRUCTION if self.text_instruction is None else self.text_instruction
        return (instruction, text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._client.embed([self._query_pair(query)])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._async.get().embed([self._query_pair(query)]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._client.embed([self._text_pair(text)])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._async.get().embed([self._text_pair(text)]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed([self._text_pair(t) for t in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._async.get().embed([self._text_pair(t) for t in texts])
