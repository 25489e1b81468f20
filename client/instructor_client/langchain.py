"""LangChain ``Embeddings`` backed by a served INSTRUCTOR model: a drop-in for HuggingFaceInstructEmbeddings.

    # before: HuggingFaceInstructEmbeddings(model_name="hkunlp/instructor-large")
    from instructor_client.langchain import InstructorEmbeddings
    embeddings = InstructorEmbeddings(url="http://127.0.0.1:8080", model_name="instructor-large",
                                      key_file="key_file.json")

Same defaults and the same pairs as LangChain's class: ``embed_documents`` embeds
``[embed_instruction, text]``, ``embed_query`` ``[query_instruction, text]``; the text is sent unchanged.
Upstream's arguments are accepted: ``model_name`` (here the name the server serves the model under; ``model``
is the same), ``embed_instruction``, ``query_instruction``, ``show_progress``, ``encode_kwargs`` (batch_size,
normalize_embeddings, show_progress_bar; device has no effect), ``model_kwargs`` (device only, no effect) and
``cache_folder`` (no effect: nothing is downloaded here); any other key is refused with its name. A pydantic
model like upstream's: it survives ``copy``, ``pickle`` and ``model_dump()`` / ``model_validate()`` (the token
and key file included; the HTTP clients are made again on first use). Needs the ``langchain`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from instructor_client import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from instructor_client._adapter_options import ENCODE_KWARGS, MODEL_KWARGS, checked_kwargs, client_options, normalized
from instructor_client._per_loop import AsyncClientPerLoop
from instructor_client.client import DEFAULT_MODEL, DEFAULT_URL, InstructorClient


class InstructorEmbeddings(BaseModel, Embeddings):
    """Embeddings from an instructor-serve endpoint (sync and native async).

    ``url``, ``model_name``, ``token`` / ``key_file`` and ``**client_options`` (timeout, max_retries,
    batch_size, concurrency, ...) go to InstructorClient / AsyncInstructorClient.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    url: str | list[str] = DEFAULT_URL
    model: str = Field(default=DEFAULT_MODEL, validation_alias=AliasChoices("model", "model_name"))
    token: str | None = None
    key_file: str | None = None
    embed_instruction: str = DEFAULT_EMBED_INSTRUCTION
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    show_progress: bool = False
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    cache_folder: str | None = None
    client_options: dict[str, Any] = Field(default_factory=dict)

    _client: InstructorClient | None = PrivateAttr(default=None)
    _async: AsyncClientPerLoop | None = PrivateAttr(default=None)

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str | None = None, /, **data: Any) -> None:
        if data.get("key_file") is not None:
            data["key_file"] = os.fspath(data["key_file"])  # a Path, as the client takes
        fields = set(type(self).model_fields) | {"model_name"}
        options = {key: data.pop(key) for key in list(data) if key not in fields}
        options = {**data.pop("client_options", {}), **client_options(options, type(self).__name__)}
        if model is not None:
            data["model"] = model
        data.setdefault("url", url if isinstance(url, str) else list(url))
        super().__init__(client_options=options, **data)

    @field_validator("encode_kwargs")
    @classmethod
    def _check_encode_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_kwargs(value, ENCODE_KWARGS, "encode_kwargs")

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_kwargs(value, MODEL_KWARGS, "model_kwargs")

    @property
    def model_name(self) -> str:
        """Upstream's name for ``model``."""
        return self.model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``[embed_instruction, text]`` for each text, in order."""
        return self._finish(self._sync().embed([(self.embed_instruction, t) for t in texts], **self._embed_args()))

    def embed_query(self, text: str) -> list[float]:
        """The vector of ``[query_instruction, text]``."""
        return self._finish(self._sync().embed([(self.query_instruction, text)]))[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_documents`` over httpx's AsyncClient (no thread executor)."""
        pairs = [(self.embed_instruction, t) for t in texts]
        return self._finish(await self._per_loop().get().embed(pairs, **self._embed_args()))

    async def aembed_query(self, text: str) -> list[float]:
        """Async ``embed_query``."""
        return self._finish(await self._per_loop().get().embed([(self.query_instruction, text)]))[0]

    def _embed_args(self) -> dict[str, Any]:
        progress = self.show_progress or bool(self.encode_kwargs.get("show_progress_bar"))
        return {"batch_size": self.encode_kwargs.get("batch_size"), "progress": progress}

    def _finish(self, vectors: list[list[float]]) -> list[list[float]]:
        return normalized(vectors) if self.encode_kwargs.get("normalize_embeddings") else vectors

    def _options(self) -> dict[str, Any]:
        return {"token": self.token, "key_file": self.key_file, **self.client_options}

    def _sync(self) -> InstructorClient:
        # Made on first use, so that copies and unpickled instances get their own connections.
        if self._client is None:
            self._client = InstructorClient(self.url, self.model, **self._options())
        return self._client

    def _per_loop(self) -> AsyncClientPerLoop:
        if self._async is None:
            self._async = AsyncClientPerLoop(self.url, self.model, self._options())
        return self._async

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "__pydantic_private__": {"_client": None, "_async": None}}

    def __copy__(self) -> InstructorEmbeddings:
        return type(self).model_validate(self.model_dump())

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> InstructorEmbeddings:
        return self.__copy__()
