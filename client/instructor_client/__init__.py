"""Client for an instructor-serve endpoint (INSTRUCTOR embeddings on TorchServe).

    from instructor_client import InstructorClient

    with InstructorClient("http://127.0.0.1:8080", model="demo", key_file="key_file.json") as client:
        vectors = client.embed([("Represent the Science title:", "3D ActionSLAM ...")])
        vectors.tokens                      # tokens the server embedded (None if it does not report them)
        matrix = client.embed_array(pairs).vectors   # float32 numpy matrix, for bulk work
"""

from instructor_client.auth import TOKEN_ENV, read_inference_key, resolve_token
from instructor_client.batching import MAX_PAIRS_PER_REQUEST
from instructor_client.client import AsyncInstructorClient, Embeddings, InstructorClient
from instructor_client.errors import (
    APIError,
    AuthenticationError,
    ConnectionFailedError,
    InputTooLongError,
    InstructorServeError,
    InvalidInputError,
    InvalidPairError,
    NothingToEmbedError,
    PayloadTooLargeError,
    ResponseFormatError,
    ServerError,
    ServiceUnavailableError,
)
from instructor_client.transport import Batch

# The defaults of LangChain's HuggingFaceInstructEmbeddings (langchain_community.embeddings.huggingface), which
# llama-index-embeddings-instructor also applies to hkunlp/instructor-* model names.
DEFAULT_EMBED_INSTRUCTION = "Represent the document for retrieval: "
DEFAULT_QUERY_INSTRUCTION = "Represent the question for retrieving supporting documents: "

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EMBED_INSTRUCTION",
    "DEFAULT_QUERY_INSTRUCTION",
    "MAX_PAIRS_PER_REQUEST",
    "TOKEN_ENV",
    "APIError",
    "AsyncInstructorClient",
    "AuthenticationError",
    "Batch",
    "ConnectionFailedError",
    "Embeddings",
    "InputTooLongError",
    "InstructorClient",
    "InstructorServeError",
    "InvalidInputError",
    "InvalidPairError",
    "NothingToEmbedError",
    "PayloadTooLargeError",
    "ResponseFormatError",
    "ServerError",
    "ServiceUnavailableError",
    "read_inference_key",
    "resolve_token",
]
