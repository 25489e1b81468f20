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
Upstream's ``cache_folder`` and ``device`` are accepted and have no effect (the server computes), and every
BaseEmbedding field (``num_workers``, ...) is accepted, so ``to_dict``/``from_dict``, ``copy`` and ``pickle``
round-trip (the token and key file included; the HTTP clients are made again on first use).
Needs the ``llama-index`` extra (llama-index-core).
"""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from instructor_client import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from instructor_client._adapter_options import client_options
from instructor_client._per_loop import AsyncClientPerLoop
from instructor_client.client import DEFAULT_MODEL, DEFAULT_URL, InstructorClient


class InstructorEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an instructor-serve endpoint (sync and native async)."""

    url: str = Field(default=DEFAULT_URL, description="Base URL of the server (TorchServe inference API).")
    query_instruction: str | None = Field(default=None, description="Instruction for queries.")
    text_instruction: str | None = Field(default=None, description="Instruction for documents (nodes).")
    token: str | None = Field(default=None, description="The inference key (else key_file).")
    key_file: str | None = Field(default=None, description="TorchServe's key_file.json.")
    cache_folder: str | None = Field(default=None, description="Upstream's; no effect (the server computes).")
    device: str | None = Field(default=None, description="Upstream's; no effect (the server's device computes).")
    client_options: dict[str, Any] = Field(default_factory=dict, description="InstructorClient options.")

    _client: InstructorClient | None = PrivateAttr(default=None)
    _async: AsyncClientPerLoop | None = PrivateAttr(default=None)

    def __init__(self, url: str = DEFAULT_URL, model_name: str = DEFAULT_MODEL, *,
                 embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE, callback_manager: Any = None,
                 **data: Any) -> None:
        if data.get("key_file") is not None:
            data["key_file"] = os.fspath(data["key_file"])  # a Path, as the client takes
        fields = set(type(self).model_fields)
        options = {key: data.pop(key) for key in list(data) if key not in fields}
        options = {**data.pop("client_options", {}), **client_options(options, type(self).__name__)}
        super().__init__(url=url, model_name=model_name, embed_batch_size=embed_batch_size,
                         callback_manager=callback_manager, client_options=options, **data)

    @classmethod
    def class_name(cls) -> str:
        return "InstructorServeEmbedding"

    def _options(self) -> dict[str, Any]:
        return {"token": self.token, "key_file": self.key_file, **self.client_options}

    def _sync(self) -> InstructorClient:
        # Made on first use, so that copies and unpickled instances get their own connections.
        if self._client is None:
            self._client = InstructorClient(self.url, self.model_name, **self._options())
        return self._client

    def _per_loop(self) -> AsyncClientPerLoop:
        if self._async is None:
            self._async = AsyncClientPerLoop(self.url, self.model_name, self._options())
        return self._async

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "__pydantic_private__": {"_client": None, "_async": None}}

    def _query_pair(self, query: str) -> tuple[str, str]:
        instruction = DEFAULT_QUERY_INSTRUCTION if self.query_instruction is None else self.query_instruction
        return (instruction, query)

    def _text_pair(self, text: str) -> tuple[str, str]:
        instruction = DEFAULT_EMBED_INSTRUCTION if self.text_instruction is None else self.text_instruction
        return (instruction, text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._sync().embed([self._query_pair(query)])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._per_loop().get().embed([self._query_pair(query)]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._sync().embed([self._text_pair(text)])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._per_loop().get().embed([self._text_pair(text)]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._sync().embed([self._text_pair(t) for t in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._per_loop().get().embed([self._text_pair(t) for t in texts])
