"""The API catalog: server reflection over the mesh's full descriptor set, on a public route,
so `grpcurl -plaintext <gateway> list` and `describe` show every service through the gateway."""
from google.protobuf import descriptor_pb2, descriptor_pool

from services import kit


async def setup(app: kit.App) -> list[kit.Binding]:
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(
        open(app.config.descriptor_set, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    names = []
    for file in descriptors.file:
        pool.Add(file)
        names += [f"{file.package}.{service.name}" for service in file.service]
    app.reflect(names, pool)
    return []


kit.serve(setup)
