"""The topology's retention block: units, and the rule that keeps dedupe correct after pruning."""
import pytest

from services.kit.retention import Retention, StreamLimits, seconds, size


def test_durations_and_sizes_read_as_written():
    assert (seconds("90s"), seconds("15m"), seconds("12h"), seconds("30d")) == (90, 900, 43200, 2592000)
    assert (size("256MiB"), size("1GiB")) == (256 << 20, 1 << 30)
    with pytest.raises(ValueError, match="duration"):
        seconds("30 days")


def test_the_block_parses_and_travels_as_json():
    parsed = Retention.parse({"streams": {"JOBS": {"max_age": "7d", "max_bytes": "1GiB", "discard": "new"}},
                              "tables": {"conversations": {"max_age": "90d"}}, "prune_every": "1m"})
    assert parsed.streams["JOBS"] == StreamLimits(7 * 86400, 1 << 30, "new")
    assert Retention.from_json(parsed.to_json()) == parsed


def test_a_table_that_dedupes_must_outlive_the_streams_it_dedupes():
    with pytest.raises(ValueError, match="outlive"):
        Retention.parse({"streams": {"USERS": {"max_age": "30d", "max_bytes": "1GiB"}},
                         "tables": {"notifications": {"max_age": "7d", "dedupes": ["USERS"]}}})
