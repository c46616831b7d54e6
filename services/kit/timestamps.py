"""datetime <-> google.protobuf.Timestamp, the one way every service writes times."""
from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
