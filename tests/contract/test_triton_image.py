"""The Triton image's model repository (aimesh.triton.assemble(image=True)), checked offline: no
Triton with the onnxruntime backend runs here (the pip wheel has only the python backend), so the
configs are parsed with Triton's own ModelConfig protobuf, the ensemble's wiring and the ONNX
graph's names and types are compared, and the ensemble is run by hand in-process: the tokenizer
model's execute(), then onnxruntime on the same model.onnx the onnxruntime backend would load."""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import onnxruntime
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

import aimesh.models
from aimesh import triton

MODEL = "text_embedding"
ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
ONNX_TYPES = {"tensor(int64)": DataType.TYPE_INT64, "tensor(int32)": DataType.TYPE_INT32,
              "tensor(float)": DataType.TYPE_FP32, "tensor(float16)": DataType.TYPE_FP16}


@pytest.fixture(scope="module")
def repositories(tmp_path_factory):
    aimesh.models.build([MODEL])        # offline, from packages; skips what is current
    return (triton.assemble(tmp_path_factory.mktemp("image"), image=True),
            triton.assemble(tmp_path_factory.mktemp("local")))


@pytest.fixture(scope="module")
def image(repositories):
    return repositories[0]


@pytest.fixture(scope="module")
def configs(image) -> dict[str, ModelConfig]:
    return {folder.name: parse((folder / "config.pbtxt").read_text())
            for folder in image.iterdir()}


def parse(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


# --- the configs -----------------------------------------------------------------------------

def test_every_image_config_parses_as_tritons_model_config(image, configs):
    assert set(configs) == set(triton.folders(image=True))
    for folder, config in configs.items():
        assert config.name == folder, "Triton wants the folder named as the model"
        assert config.backend or config.platform


def test_model_config_parsing_can_fail():
    with pytest.raises(text_format.ParseError):
        parse('name: "x"\nbackend: "onnxruntime"\ninstance_group [{ kind: KIND_TPU }]')


def test_the_image_serves_the_same_models_as_the_local_runner(configs, repositories):
    local = {f.name: parse((f / "config.pbtxt").read_text()) for f in repositories[1].iterdir()}
    assert set(local) == set(triton.MODELS) <= set(configs)
    for name in triton.MODELS:      # what callers see: names, types, shapes, batching
        image_side, local_side = configs[name], local[name]
        assert list(image_side.input) == list(local_side.input), name
        assert list(image_side.output) == list(local_side.output), name
        assert image_side.max_batch_size == local_side.max_batch_size, name


def test_text_embedding_is_an_ensemble_ending_on_the_onnxruntime_backend_on_the_gpu(configs):
    ensemble = configs[MODEL]
    assert ensemble.platform == "ensemble"
    steps = [configs[s.model_name] for s in ensemble.ensemble_scheduling.step]
    assert [(s.backend, s.name) for s in steps] == [
        ("python", "text_embedding_tokenizer"), ("onnxruntime", "text_embedding_encoder")]
    encoder = steps[-1]
    assert [g.kind for g in encoder.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    for step in steps:
        assert step.HasField("dynamic_batching"), step.name
        assert step.max_batch_size >= ensemble.max_batch_size, step.name


def _compatible(a, b) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def wiring_errors(configs: dict[str, ModelConfig], name: str) -> list[str]:
    """What is wrong with how an ensemble's steps pass tensors: each step input fed by an
    ensemble input or an earlier step's output of the same type and shape, every input of each
    step model fed, every ensemble output produced."""
    ensemble, errors = configs[name], []
    tensors = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            errors.append(f"{step.model_name}: not in the repository")
            continue
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        for needed in (t.name for t in model.input if not t.optional):
            if needed not in step.input_map:
                errors.append(f"{model.name}.{needed}: nothing feeds it")
        for key, tensor in step.input_map.items():
            if key not in inputs:
                errors.append(f"{model.name} has no input {key}")
            elif tensor not in tensors:
                errors.append(f"{model.name}.{key} <- {tensor}: no such tensor yet")
            elif tensors[tensor][0] != inputs[key][0] or not _compatible(tensors[tensor][1],
                                                                         inputs[key][1]):
                errors.append(f"{model.name}.{key} <- {tensor}: {inputs[key]} vs {tensors[tensor]}")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                errors.append(f"{model.name} has no output {key}")
            else:
                tensors[tensor] = outputs[key]
    for output in ensemble.output:
        made = tensors.get(output.name)
        if made is None or made[0] != output.data_type or not _compatible(made[1], output.dims):
            errors.append(f"ensemble output {output.name}: {made} from the steps")
    return errors


def test_ensemble_steps_wire_tensors_that_exist_with_matching_types(configs):
    assert wiring_errors(configs, MODEL) == []


def test_the_wiring_check_can_fail(configs):
    broken = {name: ModelConfig.FromString(c.SerializeToString()) for name, c in configs.items()}
    broken["text_embedding_encoder"].input[0].data_type = DataType.TYPE_INT32
    broken["text_embedding_encoder"].output[0].name = "pooled"
    errors = wiring_errors(broken, MODEL)
    assert any("input_ids" in e for e in errors) and any("EMBEDDING" in e for e in errors)


def test_encoder_config_is_the_onnx_graphs_own(image, configs):
    encoder = configs["text_embedding_encoder"]
    graph = onnxruntime.InferenceSession(str(image / encoder.name / "1" / "model.onnx"),
                                         providers=["CPUExecutionProvider"])

    def described(tensors) -> list[tuple[str, int, list[int]]]:
        # A batching model's dims leave out the batch dimension; a named (symbolic) one is -1.
        return [(t.name, ONNX_TYPES[t.type], [d if isinstance(d, int) else -1 for d in t.shape[1:]])
                for t in tensors]

    assert described(graph.get_inputs()) == [(t.name, t.data_type, list(t.dims))
                                             for t in encoder.input]
    assert described(graph.get_outputs()) == [(t.name, t.data_type, list(t.dims))
                                              for t in encoder.output]
    assert all(isinstance(t.shape[0], str) for t in graph.get_inputs())   # any batch size


def onnx_versions(path) -> tuple[int, dict[str, int]]:
    """An ONNX file's IR version and operator sets, read through a two-field view of ModelProto
    (the onnx package is not in this environment; protobuf skips the fields it is not told of)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    Field = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="onnx_header.proto", package="onnx_header")
    opset = schema.message_type.add(name="OperatorSetId")
    opset.field.add(name="domain", number=1, type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL)
    opset.field.add(name="version", number=2, type=Field.TYPE_INT64, label=Field.LABEL_OPTIONAL)
    model = schema.message_type.add(name="Model")
    model.field.add(name="ir_version", number=1, type=Field.TYPE_INT64, label=Field.LABEL_OPTIONAL)
    model.field.add(name="opset_import", number=8, type=Field.TYPE_MESSAGE,
                    label=Field.LABEL_REPEATED, type_name=".onnx_header.OperatorSetId")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    parsed = message_factory.GetMessageClass(pool.FindMessageTypeByName("onnx_header.Model")) \
        .FromString(path.read_bytes())
    return parsed.ir_version, {o.domain or "ai.onnx": o.version for o in parsed.opset_import}


def test_the_graph_is_old_enough_for_the_images_onnxruntime(image):
    # Triton 24.10 (October 2024) ships an older ONNX Runtime than this environment's: hold the
    # graph to what ONNX Runtime 1.17 (January 2024) and later load, IR 9 and opset 20.
    ir_version, opsets = onnx_versions(image / "text_embedding_encoder" / "1" / "model.onnx")
    assert 0 < ir_version <= 9
    assert 0 < opsets["ai.onnx"] <= 20 and set(opsets) == {"ai.onnx"}


# --- the ensemble, run by hand ---------------------------------------------------------------

class Tensor:
    """Enough of the python backend's pb_utils.Tensor for a model's execute()."""

    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        assert error is None, error
        self._outputs = {t.name(): t.as_numpy() for t in output_tensors}

    def output(self, name: str) -> np.ndarray:
        return self._outputs[name]


class Request:
    def __init__(self, texts: list[str]):
        self.text = Tensor("TEXT", np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1))


def python_model(folder, config: ModelConfig, monkeypatch):
    """The model.py in folder/1, initialised as Triton would with this config, on a CPU."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor, utils.InferenceResponse = Tensor, InferenceResponse
    utils.get_input_tensor_by_name = lambda request, name: request.text if name == "TEXT" else None
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location(f"model_{folder.name}", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return model


def batches(sentences: list[str]) -> list[list[list[str]]]:
    """The sentences as the dynamic batcher might hand them over: single-row requests, requests
    of several rows (short with the long one), all in one execute() or spread over several."""
    return [[[s] for s in sentences[:8]],
            [sentences[:3], sentences[3:20], [sentences[-1], sentences[0]]],
            [sentences]]


def test_ensemble_by_hand_gives_the_local_models_vectors(repositories, configs, monkeypatch):
    image, local = repositories
    stored = json.loads((aimesh.models.output(MODEL) / "reference.json").read_text())
    sentences, reference = stored["sentences"], np.array(stored["embeddings"], dtype=np.float32)
    tokenizer = python_model(image / "text_embedding_tokenizer",
                             configs["text_embedding_tokenizer"], monkeypatch)
    encoder = onnxruntime.InferenceSession(str(image / "text_embedding_encoder" / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    alone = python_model(local / MODEL, parse((local / MODEL / "config.pbtxt").read_text()),
                         monkeypatch)
    for requests in batches(sentences):
        texts = [t for rows in requests for t in rows]
        expected = np.concatenate([r.output("EMBEDDING")
                                   for r in alone.execute([Request(rows) for rows in requests])])
        served = []
        for response in tokenizer.execute([Request(rows) for rows in requests]):
            input_ids, mask = response.output("input_ids"), response.output("attention_mask")
            assert input_ids.dtype == mask.dtype == np.int64
            assert input_ids.shape[1] in (16, 32, 64, 128, 256)    # a bucket width
            served.append(encoder.run(["embedding"], {"input_ids": input_ids,
                                                      "attention_mask": mask})[0])
        served = np.concatenate(served)
        assert served.shape == expected.shape == (len(texts), 384)
        cosines = np.sum(served * expected, axis=1)
        worst = int(np.argmin(cosines))
        assert cosines[worst] >= 0.9999, f"cosine {cosines[worst]:.6f} for {texts[worst]!r}"
        truth = reference[[sentences.index(t) for t in texts]]
        assert np.min(np.sum(served * truth, axis=1)) >= 0.999      # sentence-transformers'
