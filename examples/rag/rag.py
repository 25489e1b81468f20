"""Retrieval with a served INSTRUCTOR model and Qdrant: index corpus.jsonl, then answer questions.

Documents are embedded with the document instruction, questions with the query instruction (the
defaults of LangChain's HuggingFaceInstructEmbeddings), and Qdrant returns the nearest documents by
cosine similarity. Qdrant runs in local mode (a folder, no server) unless --qdrant-url is given; the
same code talks to a Qdrant server.

    ./scripts/serve.sh                                   # the demo model on 127.0.0.1:8080
    python examples/rag/rag.py --key-file key_file.json  # index + the sample questions
    python examples/rag/rag.py --key-file key_file.json --no-index --query "Why is the sea level changing twice a day?"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

from instructor_client import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION, InstructorClient

HERE = Path(__file__).resolve().parent
COLLECTION = "instructor-rag-example"
SAMPLE_QUESTIONS = [
    "How long should bread dough rise before baking?",
    "What causes the tides in the ocean?",
    "How do I find which commit introduced a bug?",
    "Which birds live near the equator but cannot fly?",
]


def load_corpus(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def index(qdrant: QdrantClient, client: InstructorClient, docs: list[dict[str, str]], instruction: str) -> int:
    """(Re)create the collection and store every document's vector with its payload; returns the dimension."""
    vectors = client.embed([(instruction, doc["text"]) for doc in docs], batch_size=64, concurrency=4,
                           progress=sys.stderr.isatty())
    dim = len(vectors[0])
    if qdrant.collection_exists(COLLECTION):
        qdrant.delete_collection(COLLECTION)
    qdrant.create_collection(COLLECTION, vectors_config=VectorParams(size=dim, distance=Distance.COSINE))
    qdrant.upsert(COLLECTION, points=[PointStruct(id=number, vector=vector, payload=doc)
                                      for number, (doc, vector) in enumerate(zip(docs, vectors, strict=True))])
    return dim


def search(qdrant: QdrantClient, client: InstructorClient, question: str, instruction: str,
           top_k: int) -> list[dict[str, object]]:
    """The top_k documents for a question: id, topic, score, text."""
    vector = client.embed_one(instruction, question)
    hits = qdrant.query_points(COLLECTION, query=vector, limit=top_k).points
    return [{"id": hit.payload["id"], "topic": hit.payload["topic"], "score": round(hit.score, 4),
             "text": hit.payload["text"]} for hit in hits]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="instructor-serve base URL")
    parser.add_argument("--model", default="demo", help="model name on the server")
    parser.add_argument("--key-file", default=None, help="TorchServe key_file.json (else $INSTRUCTOR_SERVE_TOKEN)")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus.jsonl", help="JSONL with id, topic, text")
    parser.add_argument("--qdrant-path", type=Path, default=HERE / "qdrant_data", help="Qdrant local-mode folder")
    parser.add_argument("--qdrant-url", default=None, help="a Qdrant server instead of local mode")
    parser.add_argument("--document-instruction", default=DEFAULT_EMBED_INSTRUCTION)
    parser.add_argument("--query-instruction", default=DEFAULT_QUERY_INSTRUCTION)
    parser.add_argument("--query", action="append", default=None,
                        help="a question (repeatable; default: a few sample questions)")
    parser.add_argument("--top-k", type=int, default=3, help="hits per question")
    parser.add_argument("--no-index", action="store_true", help="query the existing collection without re-indexing")
    parser.add_argument("--json", action="store_true", help="print the hits as one JSON object")
    args = parser.parse_args(argv)

    qdrant = QdrantClient(url=args.qdrant_url) if args.qdrant_url else QdrantClient(path=str(args.qdrant_path))
    with InstructorClient(args.url, args.model, key_file=args.key_file) as client:
        if not args.no_index:
            docs = load_corpus(args.corpus)
            started = time.monotonic()
            dim = index(qdrant, client, docs, args.document_instruction)
            print(f"indexed {len(docs)} documents ({dim}-d) in {time.monotonic() - started:.1f} s", file=sys.stderr)
        results = {q: search(qdrant, client, q, args.query_instruction, args.top_k)
                   for q in (args.query or SAMPLE_QUESTIONS)}
    qdrant.close()
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for question, hits in results.items():
        print(f"\n{question}")
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank}. {hit['score']:.3f}  {hit['id']:<18} {hit['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
