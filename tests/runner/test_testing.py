"""runner.testing: the in-process driver that plugin authors test their pipelines with."""

from __future__ import annotations

import copy

from runner.testing import Driver

PIPELINE = {
    "name": "driven",
    "source": {"type": "kafka", "topics": ["clicks"]},
    "state": {"backend": "lmdb", "path": "somewhere/else"},
    "dlq": {"type": "kafka", "topic": "dead"},
    "stages": [{"type": "aggregate", "name": "counts", "key_by": "user", "aggregations": {"n": "count"},
                "to": ["elsewhere"]}],
    "sinks": [{"type": "console"}],
}


def test_the_driver_leaves_the_pipeline_it_is_given_as_it_was(tmp_path):
    given = copy.deepcopy(PIPELINE)
    first = Driver(given, tmp_path / "a").run([{"user": "u1"}, {"user": "u1"}, {"user": "u2"}])
    assert given == PIPELINE
    # the same dict drives a second pipeline of its own, to the same results
    second = Driver(given, tmp_path / "b").run([{"user": "u1"}, {"user": "u1"}, {"user": "u2"}])
    assert first.dump["stages"]["counts"] == {"keys": [{"key": "u1", "n": 2}, {"key": "u2", "n": 1}]}
    assert second.dump == first.dump
