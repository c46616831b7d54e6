"""SearchService: semantic search over the catalog; admins index and delete documents."""
from __future__ import annotations

import json

import grpc
from pgvector.asyncpg import register_vector

from aimesh.events.v1 import events_pb2
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services import kit
from services.kit.outbox import Outbox

from .embedder import Embedder
from .indexing import WORKERS, Indexer
from .store import MIGRATIONS, Document, DocumentStore, Job, JobStore

JOB_STATES = {"queued": search_pb2.JOB_STATE_QUEUED, "running": search_pb2.JOB_STATE_RUNNING,
              "succeeded": search_pb2.JOB_STATE_SUCCEEDED, "failed": search_pb2.JOB_STATE_FAILED}

MAX_BATCH = 256          # documents per IndexDocuments call
MAX_JOB = 100_000        # documents per SubmitIndexJob
MODES = {"hybrid": search_pb2.SEARCH_MODE_HYBRID, "semantic": search_pb2.SEARCH_MODE_SEMANTIC,
         "keyword": search_pb2.SEARCH_MODE_KEYWORD}


def _document(request_document, index: int) -> Document:
    field = f"documents[{index}]"
    owner = request_document.owner_id
    if owner and not kit.validate.is_uuid(owner):
        raise kit.InvalidArgument(f"{field}.owner_id", "must be a user id")
    if not request_document.document_id.strip():
        raise kit.InvalidArgument(f"{field}.document_id", "is required")
    if len(request_document.document_id) > 200:
        raise kit.InvalidArgument(f"{field}.document_id", "must be at most 200 characters")
    if not (request_document.title.strip() or request_document.text.strip()):
        raise kit.InvalidArgument(f"{field}.text", "a document needs a title or a text")
    return Document(kit.validate.storable(request_document.document_id.strip(), f"{field}.document_id"),
                    kit.validate.storable(request_document.title, f"{field}.title"),
                    kit.validate.storable(request_document.text, f"{field}.text"),
                    kit.validate.storable_map(request_document.metadata, f"{field}.metadata"), owner)


def job_proto(job: Job) -> search_pb2.Job:
    return search_pb2.Job(job_id=job.id, state=JOB_STATES[job.state], total_count=job.total_count,
                          done_count=job.done_count, error=job.error,
                          create_time=kit.timestamp(job.created_at),
                          update_time=kit.timestamp(job.updated_at))


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, documents: DocumentStore, embedder: Embedder, jobs: JobStore,
                 outbox: Outbox, agents: dict[str, list[str]]):
        self.documents, self.embedder, self.jobs, self.outbox = documents, embedder, jobs, outbox
        self.agents = agents   # method -> workloads that call it on a user's behalf

    def _indexer(self, context: grpc.aio.ServicerContext, method: str) -> kit.Caller | kit.Agent:
        """An admin, or a workload indexing for its users (identity.on_behalf)."""
        who = kit.caller_or_agent(context, method, self.agents)
        if isinstance(who, kit.Caller) and not who.is_admin:
            raise kit.PermissionDenied("this call is for admins")
        return who

    async def IndexDocuments(self, request: search_pb2.IndexDocumentsRequest,
                            context: grpc.aio.ServicerContext) -> search_pb2.IndexDocumentsResponse:
        who = self._indexer(context, "IndexDocuments")
        incoming = kit.validate.count(request, "documents", 1, MAX_BATCH)
        documents = [_document(d, i) for i, d in enumerate(incoming)]
        if isinstance(who, kit.Agent):   # for users only, and never over someone else's document
            for i, document in enumerate(documents):
                if not document.owner:
                    raise kit.InvalidArgument(f"documents[{i}].owner_id",
                                              f"is required when {who.workload} indexes for a user")
                if await self.documents.held_by_others([document.id], document.owner):
                    raise kit.PermissionDenied(f"documents[{i}].document_id names another owner's document")
        embeddings = await self.embedder.embed([f"{d.title}\n{d.body}" for d in documents])
        await self.documents.upsert(documents, embeddings)
        return search_pb2.IndexDocumentsResponse(indexed_count=len(documents))

    async def Search(self, request: search_pb2.SearchRequest,
                    context: grpc.aio.ServicerContext) -> search_pb2.SearchResponse:
        who = kit.caller(context)
        query = kit.validate.text(request, "query", max_len=1000)
        page_size = kit.validate.in_range(request, "page_size", 1, 100, default=10)
        offset = kit.validate.page_offset(request)
        mode = kit.validate.choice(request, "mode", MODES) or "hybrid"
        [embedding] = await self.embedder.embed([query])
        filters = kit.validate.storable_map(request.filters, "filters")
        hits = await self.documents.search(embedding, query, mode=mode, filters=filters,
                                           limit=page_size + 1, offset=offset,
                                           reader=who.user_id if kit.validate.is_uuid(who.user_id) else "")
        more = len(hits) > page_size
        return search_pb2.SearchResponse(
            results=[search_pb2.SearchResult(
                document=search_pb2.Document(document_id=h.document.id, title=h.document.title,
                                             text=h.document.body, metadata=h.document.metadata,
                                             owner_id=h.document.owner),
                score=h.score) for h in hits[:page_size]],
            next_page_token=str(offset + page_size) if more else "")

    async def DeleteDocument(self, request: search_pb2.DeleteDocumentRequest,
                            context: grpc.aio.ServicerContext) -> search_pb2.DeleteDocumentResponse:
        who = self._indexer(context, "DeleteDocument")
        document_id = kit.validate.text(request, "document_id", max_len=200)
        return search_pb2.DeleteDocumentResponse(deleted=await self.documents.delete(
            document_id, owned_only=isinstance(who, kit.Agent)))

    async def SubmitIndexJob(self, request: search_pb2.SubmitIndexJobRequest,
                            context: grpc.aio.ServicerContext) -> search_pb2.SubmitIndexJobResponse:
        who = kit.admin(context)
        incoming = kit.validate.count(request, "documents", 1, MAX_JOB)
        documents = [_document(d, i) for i, d in enumerate(incoming)]

        async def queue(connection, job: Job) -> None:
            await self.outbox.add(connection, "jobs.index",
                                  events_pb2.IndexJobQueued(job_id=job.id, user_id=job.user_id))

        job = await self.jobs.create(who.user_id, documents, queue)
        return search_pb2.SubmitIndexJobResponse(job=job_proto(job))

    async def GetJob(self, request: search_pb2.GetJobRequest,
                    context: grpc.aio.ServicerContext) -> search_pb2.GetJobResponse:
        who = kit.caller(context)
        job = await self.jobs.get(kit.validate.text(request, "job_id", max_len=64))
        if job is None or (job.user_id != who.user_id and not who.is_admin):
            raise kit.NotFound(f"no job {request.job_id}")
        return search_pb2.GetJobResponse(job=job_proto(job))


async def setup(app: kit.App) -> list[kit.Binding]:
    pool = await app.database(MIGRATIONS, init=register_vector)
    documents, jobs = DocumentStore(pool), JobStore(pool)
    embedder = Embedder(app.triton())
    events = await app.events()
    outbox = app.outbox(pool, events)
    indexer = Indexer(jobs, documents, embedder, outbox)
    app.spawn(events.consume("JOBS", WORKERS, indexer.run, give_up=indexer.give_up,
                             stop=app.stopping), name=WORKERS)
    return [kit.Binding(search_pb2_grpc.add_SearchServiceServicer_to_server,
                        SearchServicer(documents, embedder, jobs, outbox, json.loads(app.config.agents or "{}")))]
