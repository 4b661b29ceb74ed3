"""An example third-party plugin: the ``redact`` stage removes or masks event fields.

Installed (``pip install -e examples/runner-redact``), it is found through its entry point in
group ``runner``; without installing, a pipeline can name the module in ``plugins:``.
"""

import hashlib

from runner import hookimpl
from runner.components import Processor, Stage
from runner.schema import obj


class Redact(Stage):
    type = "redact"
    config_schema = obj({
        "drop": {"type": "array", "items": {"type": "string"}, "default": [],
                 "description": "fields removed from every event"},
        "hash": {"type": "array", "items": {"type": "string"}, "default": [],
                 "description": "fields replaced by the first 12 hex digits of their SHA-256"},
    }, description="Removes or pseudonymizes event fields before later stages and sinks see them.")

    @classmethod
    def lint(cls, config):
        both = sorted(set(config["drop"]) & set(config["hash"]))
        return [(("hash",), f"fields both dropped and hashed: {', '.join(both)}")] if both else []

    def build(self, table, emit):
        return RedactProcessor(self, table, emit)

    def dump(self, table):
        return {"redacted": table.get(b"redacted", 0)}


class RedactProcessor(Processor):
    def process_one(self, event):
        data = event.data
        if not isinstance(data, dict):  # before validate, any JSON value: the validate stage rejects it
            return event
        for field in self.stage.config["drop"]:
            data.pop(field, None)
        for field in self.stage.config["hash"]:
            if isinstance(data.get(field), str):
                data[field] = hashlib.sha256(data[field].encode()).hexdigest()[:12]
        # state goes through the table: it is written by the next checkpoint
        self.table.put(b"redacted", self.table.get(b"redacted", 0) + 1)
        return event


@hookimpl
def runner_register_stages():
    return [Redact]
