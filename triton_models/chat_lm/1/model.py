"""chat_lm: SmolLM2-135M-Instruct, streaming its answer as text pieces (decoupled), many answers at
once.

Each request is answered by a stream of responses carrying DELTA and COMPLETION_TOKENS (so far);
the last one also carries FINISH_REASON (stop, length, or cancelled), the prompt's tokens, and the
final flag. The first token goes out at once; tokens made within `flush_ms` of the last response
go out together in the next, as each response costs CPU all the way to the client. `execute` only
queues a request: `slots` worker threads take them in arrival order, each running one generation on
the engine, which decodes all running generations together. Past the slots, up to `queue` requests
wait; beyond that a request is refused at once with an error starting "chat model busy", so a
caller never hangs behind a full model. A client that cancels (closes its stream) stops its
generation at the next token, or before it starts while it waits.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from pathlib import Path

import generation
import numpy as np
import triton_python_backend_utils as pb_utils

ARTIFACT = Path(__file__).parent / "artifact"   # aimesh/models/chat_lm.py's build, linked here
ROLES = {"system", "user", "assistant"}
FINISH_REASONS = ("stop", "length", "cancelled")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
BUSY = "chat model busy"    # chat-svc recognises this prefix and answers from retrieval


class Sender:
    """A request's response sender, safe to use from any thread: every call into Triton goes
    through one lock. Unserialised sends from several slots at once crashed Triton 2.51's python
    backend (SIGSEGV in libtriton_python.so) when many streams were cancelled together."""
    lock = threading.Lock()

    def __init__(self, request):
        self.sender = request.get_response_sender()

    def send(self, reply=None, final: bool = False) -> None:
        with self.lock:
            if final:
                self.sender.send(reply, flags=FINAL)
            else:
                self.sender.send(reply)

    def is_cancelled(self) -> bool:
        with self.lock:
            return self.sender.is_cancelled()


def count(metric, amount: int = 1) -> None:
    with Sender.lock:
        metric.increment(amount)


class BadRequest(ValueError):
    """The request's inputs are malformed; the message names the input."""


def _string(request, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _json(text: str, name: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as why:
        raise BadRequest(f"{name} is not JSON: {why}") from None


def parse(request, context_tokens: int) -> dict:
    """The generation arguments from a request's tensors, or BadRequest naming the input."""
    messages = _json(_string(request, "MESSAGES"), "MESSAGES")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages):
        raise BadRequest("MESSAGES must be a non-empty JSON list of {role, content} with role "
                         f"one of {sorted(ROLES)} and content a string")
    max_tokens = _scalar(request, "MAX_TOKENS")
    if not 1 <= max_tokens <= context_tokens:
        raise BadRequest(f"MAX_TOKENS must be between 1 and {context_tokens}")
    temperature = _scalar(request, "TEMPERATURE")
    if not 0.0 <= temperature <= 2.0:
        raise BadRequest("TEMPERATURE must be between 0 and 2")
    stop_text = _string(request, "STOP")
    stop = _json(stop_text, "STOP") if stop_text else []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("STOP must be a JSON list of non-empty strings")
    cited_text = _string(request, "CITED")
    cited = _json(cited_text, "CITED") if cited_text else None
    grammar = None
    if cited is not None:
        if not (isinstance(cited, dict) and all(
                isinstance(cited.get(key), list) and all(isinstance(v, str) and v for v in cited[key])
                for key in ("titles", "years"))):
            raise BadRequest('CITED must be JSON {"titles": [...], "years": [...]} of non-empty strings')
        grammar = generation.cited_only(cited["titles"], cited["years"])
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens, "temperature": temperature, "stop": stop, "grammar": grammar,
            "full_length": bool(_scalar(request, "FULL_LENGTH"))}


def error(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def response(delta: str, completion_tokens: int, result: generation.Result | None = None,
             ) -> pb_utils.InferenceResponse:
    if result is not None:
        completion_tokens = result.completion_tokens
    tensors = [pb_utils.Tensor("DELTA", np.array([delta.encode("utf-8")], dtype=np.object_)),
               pb_utils.Tensor("COMPLETION_TOKENS", np.array([completion_tokens], dtype=np.int32))]
    if result is not None:
        tensors += [
            pb_utils.Tensor("FINISH_REASON", np.array([result.finish_reason.encode()], dtype=np.object_)),
            pb_utils.Tensor("PROMPT_TOKENS", np.array([result.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("PROMPT_CACHED_TOKENS", np.array([result.cached_tokens], dtype=np.int32)),
        ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


class Coalescer:
    """An answer's tokens into responses: the first goes at once; tokens made within `flush_s` of
    the last response wait and go with the next one (so a token waits at most until the next is
    made), and whatever is left goes with the final response."""

    def __init__(self, flush_s: float):
        self.flush_s = flush_s
        self.tokens = 0             # made so far
        self.pending: list[str] = []
        self.sent_at = float("-inf")

    def add(self, text: str, now: float) -> str | None:
        """The text to send now, or None while it waits."""
        self.pending.append(text)
        self.tokens += 1
        if now - self.sent_at < self.flush_s:
            return None
        self.sent_at = now
        return self.rest()

    def rest(self) -> str:
        text = "".join(self.pending)
        self.pending.clear()
        return text


class Waiting:
    """Requests waiting for a slot, in arrival order, at most `bound`. A request whose client has
    gone gives its place up when the queue is full, so abandoned requests never refuse a live one."""

    def __init__(self, bound: int):
        self.bound = bound
        self.jobs: deque = deque()
        self.changed = threading.Condition()

    def offer(self, sender, arguments: dict) -> tuple[bool, list]:
        """(whether it was queued, the abandoned requests dropped to make room: close them)."""
        with self.changed:
            abandoned = []
            if len(self.jobs) >= self.bound:
                abandoned = [job for job in self.jobs if job[0].is_cancelled()]
                self.jobs = deque(job for job in self.jobs if job not in abandoned)
            if len(self.jobs) >= self.bound:
                return False, abandoned
            self.jobs.append((sender, arguments))
            self.changed.notify()
            return True, abandoned

    def take(self) -> tuple | None:
        """The oldest request, waiting for one; None tells a worker to stop."""
        with self.changed:
            self.changed.wait_for(lambda: self.jobs)
            return self.jobs.popleft()

    def stop(self, workers: int) -> None:
        with self.changed:      # after the requests already waiting
            self.jobs.extend([None] * workers)
            self.changed.notify_all()


@dataclasses.dataclass(frozen=True)
class Serving:
    queue: int          # requests waiting for a slot, at most
    flush_s: float      # tokens made within this of the last response wait for the next


def settings(model_config: dict) -> tuple[generation.Settings, Serving]:
    """The engine's settings and how requests are served, from config.pbtxt's parameters."""
    parameters = {key: int(value["string_value"])
                  for key, value in model_config.get("parameters", {}).items()}
    engine = generation.Settings(**{field.name: parameters[field.name]
                                    for field in dataclasses.fields(generation.Settings)
                                    if field.name in parameters})
    return engine, Serving(queue=parameters.get("queue", engine.slots),
                           flush_s=parameters.get("flush_ms", 0) / 1000)


class TritonPythonModel:
    def initialize(self, args):
        engine_settings, self.serving = settings(json.loads(args["model_config"]))
        self.engine = generation.Engine(ARTIFACT / "model.gguf", engine_settings)
        self.context_tokens = engine_settings.context_per_slot
        # Generations counted per finish reason on Triton's metrics endpoint: operators see
        # cancels and truncations, and tests see that a cancel really ended a generation. A family
        # must outlive its metrics, and a metric counts only while it lives: all are kept.
        self.generations_family = pb_utils.MetricFamily(
            name="chat_lm_generations_total",
            description="chat_lm generations ended, by finish reason",
            kind=pb_utils.MetricFamily.COUNTER)
        self.generations = {reason: self.generations_family.Metric(labels={"finish_reason": reason})
                            for reason in FINISH_REASONS}
        self.pieces_family = pb_utils.MetricFamily(
            name="chat_lm_pieces_total", description="chat_lm text pieces streamed",
            kind=pb_utils.MetricFamily.COUNTER)
        self.pieces = self.pieces_family.Metric(labels={})
        self.refused_family = pb_utils.MetricFamily(
            name="chat_lm_refused_total", description="chat_lm requests refused: slots and queue full",
            kind=pb_utils.MetricFamily.COUNTER)
        self.refused = self.refused_family.Metric(labels={})
        # Requests wait here in arrival order for a slot; one worker per engine slot.
        self.waiting = Waiting(self.serving.queue)
        self.workers = [threading.Thread(target=self.work, name=f"chat_lm-slot-{slot}", daemon=True)
                        for slot in range(engine_settings.slots)]
        for worker in self.workers:
            worker.start()

    def execute(self, requests):
        for request in requests:
            sender = Sender(request)
            try:
                arguments = parse(request, self.context_tokens)
            except BadRequest as why:
                sender.send(error(str(why)), final=True)
                continue
            queued, abandoned = self.waiting.offer(sender, arguments)
            for gone, _ in abandoned:
                self.close_cancelled(gone)
            if not queued:
                count(self.refused)
                sender.send(error(f"{BUSY}: {len(self.workers)} answers running and "
                                  f"{self.waiting.bound} waiting"), final=True)
        return None   # decoupled: every response goes through the request's sender

    def work(self) -> None:
        while (job := self.waiting.take()) is not None:
            self.answer(*job)

    def close_cancelled(self, sender) -> None:
        """A request given up while it waited: it never started."""
        count(self.generations["cancelled"])
        sender.send(response("", 0, generation.Result("cancelled", 0, 0)), final=True)

    def answer(self, sender, arguments: dict) -> None:
        if sender.is_cancelled():
            self.close_cancelled(sender)
            return
        streamed, pieces = 0, Coalescer(self.serving.flush_s)

        def on_piece(text: str) -> bool:
            nonlocal streamed
            if sender.is_cancelled():
                return True
            if (ready := pieces.add(text, time.monotonic())) is not None:
                sender.send(response(ready, pieces.tokens))
                streamed += 1
            return False

        try:
            messages = self.engine.fit(arguments.pop("messages"), arguments["max_tokens"])
            result = self.engine.generate(messages, on_piece=on_piece, **arguments)
        except generation.PromptTooLong as why:
            sender.send(error(f"MESSAGES: {why}"), final=True)
            return
        except Exception as why:   # the stream must still end, with the error, not hang the client
            pb_utils.Logger.log_error(f"chat_lm: generation failed: {why!r}")
            sender.send(error(f"generation failed: {why}"), final=True)
            return
        finally:
            # Counted once per generation: each metric update is a round trip to Triton.
            count(self.pieces, streamed)
        count(self.generations[result.finish_reason])
        sender.send(response(pieces.rest(), pieces.tokens, result), final=True)

    def finalize(self):
        self.waiting.stop(len(self.workers))
        for worker in self.workers:
            worker.join()
