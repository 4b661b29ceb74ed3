"""The ``file`` source: a JSONL file, one record per line (partition 0, offset = line index)."""

from __future__ import annotations

import os
import time

from runner import hookimpl
from runner.components import NO_RECORD, Record, RunnerError, Source
from runner.schema import obj, source_common

BATCH = 2000


class FileSource(Source):
    type = "file"
    config_schema = obj({
        "path": {"type": "string", "description": "the JSONL file to read"},
        "topic": {"type": ["string", "null"], "default": None, "description": "the topic name records carry (default: the path as written)"},
        **source_common(),
    }, required=("path",), description="Reads a JSONL file: a line is the bytes up to a newline; blank lines count as offsets but are no records.")

    def __init__(self, config, context):
        super().__init__(config, context)
        self.path = config["path"]
        self.topic = config.get("topic") or self.path
        self.partition = f"{self.topic}/0"
        self.file = None
        self.line = 0
        self.stop_at = None

    def open(self, offsets):
        try:
            self.file = open(self.path, "rb")
        except OSError as exc:
            raise RunnerError(f"cannot read the source file {self.path}: {exc.strerror}") from None
        target = offsets.get(self.partition, 0)
        while self.line < target and self._read_line(final_ok=True) is not None:
            pass
        return {self.partition: self.line}

    def end_offsets(self):
        """The lines present now, a final unterminated one included."""
        here = self.file.tell()
        with open(self.path, "rb") as f:
            f.seek(here)
            rest = f.read()
        extra = rest.count(b"\n") + (1 if rest and not rest.endswith(b"\n") else 0)
        self.stop_at = self.line + extra
        return {self.partition: self.stop_at}

    def _read_line(self, final_ok: bool):
        start = self.file.tell()
        raw = self.file.readline()
        if not raw:
            return None
        if not raw.endswith(b"\n"):
            # a line still being written: take it only when the run counts it as present
            if not final_ok:
                self.file.seek(start)
                return None
            self.line += 1
            return raw
        self.line += 1
        return raw[:-1]

    def poll(self, timeout):
        records = []
        final_ok = self.stop_at is not None and self.line < self.stop_at
        while len(records) < BATCH:
            offset = self.line
            raw = self._read_line(final_ok)
            if raw is None:
                break
            records.append(Record(self.topic, 0, offset, None, None, raw if raw.strip() else NO_RECORD))
        if not records:
            time.sleep(min(timeout, 0.05))
        return records

    def caught_up(self, partition):
        return os.fstat(self.file.fileno()).st_size == self.file.tell()

    def close(self):
        if self.file:
            self.file.close()


@hookimpl
def runner_register_sources():
    return [FileSource]
