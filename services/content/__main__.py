from services import kit
from services.content.server import setup

kit.serve(setup)
