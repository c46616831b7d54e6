"""SearchService: semantic search over the catalog; admins index and delete documents."""
from __future__ import annotations

import asyncio

import numpy as np

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services import kit
from services.kit.inference import Triton

from .store import MIGRATIONS, Document, DocumentStore

EMBEDDING_MODEL = "text_embedding"
MODEL_MAX_BATCH = 64   # max_batch_size in the model's config.pbtxt
MAX_BATCH = 256


class Embedder:
    """Text -> unit vectors, from Triton's text_embedding model."""

    def __init__(self, triton: Triton):
        self.triton = triton

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Chunks of the model's batch limit, sent together so Triton can batch them."""
        chunks = [texts[i:i + MODEL_MAX_BATCH] for i in range(0, len(texts), MODEL_MAX_BATCH)]
        replies = await asyncio.gather(*(
            self.triton.infer(EMBEDDING_MODEL,
                              {"TEXT": np.array([[t.encode()] for t in chunk], dtype=np.object_)})
            for chunk in chunks))
        return np.concatenate([reply["EMBEDDING"] for reply in replies])


def _document(request_document, index: int) -> Document:
    field = f"documents[{index}]"
    if not request_document.document_id.strip():
        raise kit.InvalidArgument(f"{field}.document_id", "is required")
    if len(request_document.document_id) > 200:
        raise kit.InvalidArgument(f"{field}.document_id", "must be at most 200 characters")
    if not (request_document.title.strip() or request_document.text.strip()):
        raise kit.InvalidArgument(f"{field}.text", "a document needs a title or a text")
    return Document(request_document.document_id.strip(), request_document.title,
                    request_document.text, dict(request_document.metadata))


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, documents: DocumentStore, embedder: Embedder):
        self.documents, self.embedder = documents, embedder

    async def IndexDocuments(self, request, context):
        kit.admin(context)
        incoming = kit.validate.count(request, "documents", 1, MAX_BATCH)
        documents = [_document(d, i) for i, d in enumerate(incoming)]
        embeddings = await self.embedder.embed([f"{d.title}\n{d.body}" for d in documents])
        await self.documents.upsert(documents, embeddings)
        return search_pb2.IndexDocumentsResponse(indexed_count=len(documents))

    async def Search(self, request, context):
        kit.caller(context)
        query = kit.validate.text(request, "query", max_len=1000)
        page_size = kit.validate.in_range(request, "page_size", 1, 100, default=10)
        offset = kit.validate.page_offset(request)
        [embedding] = await self.embedder.embed([query])
        hits = await self.documents.nearest(embedding, filters=dict(request.filters),
                                            limit=page_size + 1, offset=offset)
        more = len(hits) > page_size
        return search_pb2.SearchResponse(
            results=[search_pb2.SearchResult(
                document=search_pb2.Document(document_id=h.document.id, title=h.document.title,
                                             text=h.document.body, metadata=h.document.metadata),
                score=h.score) for h in hits[:page_size]],
            next_page_token=str(offset + page_size) if more else "")

    async def DeleteDocument(self, request, context):
        kit.admin(context)
        document_id = kit.validate.text(request, "document_id", max_len=200)
        return search_pb2.DeleteDocumentResponse(deleted=await self.documents.delete(document_id))


async def setup(app: kit.App) -> list[kit.Binding]:
    documents = DocumentStore(await app.database(MIGRATIONS))
    embedder = Embedder(Triton(app.channel(app.config.triton_address)))
    return [kit.Binding("aimesh.search.v1.SearchService",
                        search_pb2_grpc.add_SearchServiceServicer_to_server,
                        SearchServicer(documents, embedder))]
