"""Bulk indexing: jobs taken from the JOBS work queue by any search instance, embedded in
batches, with progress kept so a redelivered job resumes where it stopped."""
from __future__ import annotations

from aimesh.events.v1 import events_pb2
from services import kit
from services.kit.outbox import Outbox

from .embedder import Embedder
from .store import DocumentStore, Job, JobStore

BATCH = 64
BATCH_DEADLINE_S = 30.0   # a busy CPU may take seconds per batch; a job has no caller waiting
WORKERS = "search-indexer"   # one durable work-queue consumer shared by every instance


class Indexer:
    def __init__(self, jobs: JobStore, documents: DocumentStore, embedder: Embedder,
                 outbox: Outbox):
        self.jobs, self.documents, self.embedder, self.outbox = jobs, documents, embedder, outbox

    async def run(self, event: events_pb2.Envelope) -> None:
        """Index one queued job. A Triton outage raises, so the job is redelivered and resumes."""
        queued = kit.unpack(event, events_pb2.IndexJobQueued)
        job = await self.jobs.get(queued.job_id)
        if job is None or job.state in ("succeeded", "failed"):
            return   # a redelivery of a job already finished
        while batch := await self.jobs.next_documents(job, BATCH):
            embeddings = await self.embedder.embed([d.title + "\n" + d.body for d in batch],
                                                   timeout_s=BATCH_DEADLINE_S)
            await self.documents.upsert(batch, embeddings)
            job = await self.jobs.progress(job.id, job.done_count + len(batch))
        await self.jobs.finish(job.id, self._completed)

    async def give_up(self, event: events_pb2.Envelope, failure: Exception) -> None:
        queued = kit.unpack(event, events_pb2.IndexJobQueued)
        if (job := await self.jobs.get(queued.job_id)) and job.state not in ("succeeded", "failed"):
            await self.jobs.finish(job.id, self._completed, error=str(failure)[:500])

    async def _completed(self, connection, job: Job) -> None:
        await self.outbox.add(connection, "job.completed", events_pb2.JobCompleted(
            job_id=job.id, user_id=job.user_id, succeeded=job.state == "succeeded",
            indexed_count=job.done_count, error=job.error))
