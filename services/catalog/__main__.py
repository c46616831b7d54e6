"""The API catalog: server reflection over the mesh's full descriptor set, on a public route,
so `grpcurl -plaintext <gateway> list` and `describe` show every service through the gateway."""
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2

from services import kit


async def setup(app: kit.App) -> list[kit.Binding]:
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(
        open(app.config.descriptor_set, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    names = []
    for file in descriptors.file:
        pool.Add(file)
        names += [f"{file.package}.{service.name}" for service in file.service]
    # The details every refusal carries (google.rpc.BadRequest, ...): a client such as grpcurl
    # looks their type up here to print them, where no contract imports them.
    _add_with_imports(pool, error_details_pb2.DESCRIPTOR)
    app.reflect(names, pool)
    return []


def _add_with_imports(pool: descriptor_pool.DescriptorPool, file: descriptor.FileDescriptor) -> None:
    try:
        pool.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for imported in file.dependencies:
        _add_with_imports(pool, imported)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)


kit.serve(setup)
