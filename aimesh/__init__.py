"""aimesh: the CLI and local runner (topology, Envoy config, process supervision, codegen).

Generated stubs live in gen/python/aimesh/<svc>/v1; extending the package path lets them be
imported as aimesh.<svc>.v1 beside this package."""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
