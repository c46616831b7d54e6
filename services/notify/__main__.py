from services import kit
from services.notify.server import setup

kit.serve(setup)
