"""Triton's gRPC inference API on a kit channel: every call has a deadline, is traced, and goes
through the east-west listener. Any failure is kit.Unavailable, so callers with a fallback
catch one error type."""
from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc
import numpy as np
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


class Triton:
    def __init__(self, channel: grpc.aio.Channel):
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def infer(self, model: str, inputs: dict[str, np.ndarray], *, version: str = "",
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        try:
            reply = await self.stub.ModelInfer(_request(model, inputs, version), timeout=timeout_s,
                                               metadata=((MODEL_HEADER, model),))
        except grpc.aio.AioRpcError as failure:
            raise Unavailable(f"model {model}: {failure.code().name} {failure.details()}") from failure
        return _outputs(reply)

    async def stream(self, model: str, inputs: dict[str, np.ndarray], *, last_output: str,
                     timeout_s: float | None = None) -> AsyncGenerator[dict[str, np.ndarray]]:
        """A decoupled model's responses as they come, up to the one carrying `last_output`.
        Leaving the loop early (or being cancelled) cancels the call, and Triton tells the
        model, which stops generating."""
        call = self.stub.ModelStreamInfer(timeout=timeout_s, metadata=((MODEL_HEADER, model),))
        try:
            await call.write(_request(model, inputs))
            await call.done_writing()
            async for response in call:
                if response.error_message:
                    raise Unavailable(f"model {model}: {response.error_message}")
                outputs = _outputs(response.infer_response)
                yield outputs
                if last_output in outputs:
                    return
            raise Unavailable(f"model {model}: the stream ended before its last response")
        except grpc.aio.AioRpcError as failure:
            raise Unavailable(f"model {model}: {failure.code().name} {failure.details()}") from failure
        finally:
            call.cancel()
