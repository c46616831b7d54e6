from services import kit
from services.chat.server import setup

kit.serve(setup)
