from services import kit
from services.user.server import setup

kit.serve(setup)
