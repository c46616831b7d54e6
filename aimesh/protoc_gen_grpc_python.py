"""A protoc plugin for buf: gRPC Python stubs from grpcio-tools' generator.

grpcio-tools ships that generator inside its protoc, not as a `protoc-gen-grpc_python` binary,
so this adapter hands the request to it and returns what it wrote."""
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp, "input.binpb")
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out = Path(tmp, "out")
        out.mkdir()
        if protoc.main(["protoc", f"--descriptor_set_in={descriptors}",
                        f"--grpc_python_out={out}", *request.file_to_generate]):
            response.error = "grpc_tools.protoc failed to generate gRPC stubs"
        for path in sorted(out.rglob("*.py")):
            response.file.add(name=str(path.relative_to(out)), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
