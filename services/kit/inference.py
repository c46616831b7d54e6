"""Triton's gRPC inference API on a kit channel: every call has a deadline, is traced (where
traces are exported), and goes through the east-west listener. Any failure is kit.Unavailable,
so callers with a fallback catch one error type."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import grpc
import numpy as np
import yaml
from opentelemetry import trace
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import (
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from .errors import Unavailable

# Names the model on every call, so the gateway can tell one model's calls from another's
# (`aimesh fault triton --model recommender`): the model is otherwise only inside the body.
MODEL_HEADER = "x-aimesh-model"
STREAM_END_S = 1.0       # how long a finished stream may take to say it ended


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    return np.ascontiguousarray(array).tobytes()


def _array(output, raw: bytes) -> np.ndarray:
    if output.datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(output.shape)
    return np.frombuffer(raw, dtype=triton_to_np_dtype(output.datatype)).reshape(output.shape)


def _request(model: str, inputs: dict[str, np.ndarray], version: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=list(array.shape))
        request.raw_input_contents.append(_raw(array))
    return request


def _outputs(reply: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    return {output.name: _array(output, raw)
            for output, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)}


async def _read_to_end(call: grpc.aio.StreamStreamCall) -> None:
    """A decoupled request's last response is also its final one, so its stream ends right after.
    Reading that end, rather than cancelling the call, closes the call's span and Triton's."""
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
        async with asyncio.timeout(STREAM_END_S):
            async for _ in call:
                pass


class ModelVersions:
    """Which model version answers when a caller asks for one: the operator's swaps (`aimesh models
    swap recommender --from 1 --to 3` writes {recommender: {"1": "3"}} to this file), read again
    when it changes, checked at most every CHECK_EVERY_S on use. So a call made that long after
    the file changed asks for the new version: the swap waits that long before unloading the old."""
    CHECK_EVERY_S = 0.5

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.swaps: dict[str, dict[str, str]] = {}
        self._checked = -self.CHECK_EVERY_S
        self._stamp: tuple[int, int, int] | None = None

    def served(self, model: str, version: str) -> str:
        if self.path is not None and time.monotonic() - self._checked >= self.CHECK_EVERY_S:
            self._reload()
        return self.swaps.get(model, {}).get(version, version)

    def _reload(self) -> None:
        assert self.path is not None
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self.swaps, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)   # written by rename: a new inode
        if stamp != self._stamp:
            raw = yaml.safe_load(self.path.read_text()) or {}
            self.swaps = {str(m): {str(a): str(b) for a, b in v.items()} for m, v in raw.items()}
            self._stamp = stamp


class Triton:
    def __init__(self, channel: grpc.aio.Channel, versions: ModelVersions | None = None):
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.versions = versions or ModelVersions(None)

    async def infer(self, model: str, inputs: dict[str, np.ndarray], *, version: str = "",
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        if version:
            version = self.versions.served(model, version)
        try:
            reply = await self.stub.ModelInfer(_request(model, inputs, version), timeout=timeout_s,
                                               metadata=((MODEL_HEADER, model),))
        except grpc.aio.AioRpcError as failure:
            raise Unavailable(f"model {model}: {failure.code().name} {failure.details()}") from failure
        return _outputs(reply)

    async def stream(self, model: str, inputs: dict[str, np.ndarray], *, last_output: str,
                     timeout_s: float | None = None, under: trace.Span | None = None,
                     ) -> AsyncGenerator[dict[str, np.ndarray]]:
        """A decoupled model's responses as they come, up to the one carrying `last_output`.
        Leaving the loop early (or being cancelled) cancels the call, and Triton tells the
        model, which stops generating. The call's span hangs under `under` when given (a span
        the caller started but cannot enter: a generator must not hold a context across yields)."""
        with trace.use_span(under, end_on_exit=False) if under else contextlib.nullcontext():
            call = self.stub.ModelStreamInfer(timeout=timeout_s, metadata=((MODEL_HEADER, model),))
        try:
            try:
                await call.write(_request(model, inputs))
                await call.done_writing()
            except asyncio.InvalidStateError:   # the call ended before its request went out
                raise Unavailable(f"model {model}: {(await call.code()).name} {await call.details()}") from None
            async for response in call:
                if response.error_message:
                    raise Unavailable(f"model {model}: {response.error_message}")
                outputs = _outputs(response.infer_response)
                if last_output in outputs:
                    await _read_to_end(call)
                    yield outputs
                    return
                yield outputs
            raise Unavailable(f"model {model}: the stream ended before its last response")
        except grpc.aio.AioRpcError as failure:
            raise Unavailable(f"model {model}: {failure.code().name} {failure.details()}") from failure
        finally:
            call.cancel()
