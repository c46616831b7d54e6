"""chat_lm: SmolLM2-135M-Instruct, streaming its answer one text piece per response (decoupled).

Each request is answered by a stream of responses carrying DELTA; the last one also carries
FINISH_REASON (stop, length, or cancelled) and the final flag. A client that cancels (closes its
stream) stops the generation at the next piece: the sender is asked between pieces.
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

import generation

ROLES = {"system", "user", "assistant"}
FINISH_REASONS = ("stop", "length", "cancelled")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


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


def parse(request) -> dict:
    """The generation arguments from a request's tensors, or BadRequest naming the input."""
    messages = _json(_string(request, "MESSAGES"), "MESSAGES")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages):
        raise BadRequest("MESSAGES must be a non-empty JSON list of {role, content} with role "
                         f"one of {sorted(ROLES)} and content a string")
    max_tokens = _scalar(request, "MAX_TOKENS")
    if not 1 <= max_tokens <= generation.CONTEXT_TOKENS:
        raise BadRequest(f"MAX_TOKENS must be between 1 and {generation.CONTEXT_TOKENS}")
    temperature = _scalar(request, "TEMPERATURE")
    if not 0.0 <= temperature <= 2.0:
        raise BadRequest("TEMPERATURE must be between 0 and 2")
    stop_text = _string(request, "STOP")
    stop = _json(stop_text, "STOP") if stop_text else []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("STOP must be a JSON list of non-empty strings")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens, "temperature": temperature, "stop": stop}


def response(delta: str, finish_reason: str | None = None) -> pb_utils.InferenceResponse:
    tensors = [pb_utils.Tensor("DELTA", np.array([delta.encode("utf-8")], dtype=np.object_))]
    if finish_reason is not None:
        tensors.append(pb_utils.Tensor("FINISH_REASON",
                                       np.array([finish_reason.encode()], dtype=np.object_)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class TritonPythonModel:
    def initialize(self, args):
        self.model = generation.load()
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

    def execute(self, requests):
        # One request at a time: the one llama.cpp context is not shared between generations.
        for request in requests:
            self.answer(request)
        return None   # decoupled: every response goes through the request's sender

    def answer(self, request) -> None:
        sender = request.get_response_sender()
        try:
            arguments = parse(request)
        except BadRequest as why:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(why))),
                        flags=FINAL)
            return
        try:
            finish_reason, text = self.generate(sender, arguments)
        except Exception as why:   # the stream must still end, with the error, not hang the client
            pb_utils.Logger.log_error(f"chat_lm: generation failed: {why!r}")
            sender.send(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"generation failed: {why}")), flags=FINAL)
            return
        self.generations[finish_reason].increment(1)
        sender.send(response(text, finish_reason), flags=FINAL)

    def generate(self, sender, arguments: dict) -> tuple[str, str]:
        """Stream all pieces but the last; return (finish reason, the last piece's text)."""
        pieces = generation.stream(self.model, **arguments)
        streamed = 0
        try:
            for piece in pieces:
                if sender.is_cancelled():
                    return "cancelled", ""
                if piece.finish_reason is not None:
                    return piece.finish_reason, piece.text
                sender.send(response(piece.text))
                streamed += 1
        finally:
            pieces.close()   # a cancel leaves the generator mid-way: end it here
            # Counted once per generation: each metric update is a round trip to Triton.
            self.pieces.increment(streamed)
        return "stop", ""    # not reached: llama.cpp's last chunk always names its reason
