from services import kit
from services.search.server import setup

kit.serve(setup)
