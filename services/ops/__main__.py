from services import kit
from services.ops.server import setup

kit.serve(setup)
