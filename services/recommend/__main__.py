from services import kit
from services.recommend.server import setup

kit.serve(setup)
