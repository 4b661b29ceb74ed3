"""The Kafka sink's producer process: kafka-python encodes and sends records beside the processing.

kafka-python's ``send`` costs 30 to 90 us a record in pure Python, and its sender thread takes
the interpreter lock from the processing; in a process of its own both run on the other core.
The sink hands over each delivery's records at once and learns their fate at ``flush``.

Messages, parent to child: ``(servers, options, client_id, settings)`` first, then
``("send", topic, [(value, key, id), ...])``, ``("flush", timeout)`` and ``("stop", wait)``
(flush what is in flight for at most ``wait`` s, then exit). Child to parent, for each flush:
``("flushed", {partition: end offset of our acknowledged records})``, or ``("failed",
message)`` when a send since the last flush failed; a producer that failed sends nothing
more (the sink replaces it).
"""

from __future__ import annotations

from kafka.errors import KafkaError

from plugins import kafka_common as kc
from runner.components import RunnerError
from runner.helper import Helper, child_connection, run_child

HEADER = "runner-id"
ANSWER_MARGIN_S = 10.0  # a flush is answered within its timeout and this


class RemoteProducer(Helper):
    """The producer process, from the sink."""

    def __init__(self, servers: str, options: dict, client_id: str, settings: dict):
        super().__init__("plugins.sinks.kafka_producer", (servers, options, client_id, settings))
        self.servers = servers

    def send(self, topic: str, records: list[tuple[bytes, bytes | None, bytes]]) -> None:
        """Hand over ``(value, key, runner-id)`` records; raises ``RunnerError`` if the process is gone."""
        try:
            self.post(("send", topic, records))
        except OSError:
            raise RunnerError(self._gone()) from None

    def flush(self, timeout: float) -> dict[int, int]:
        """Wait for every record sent since the last flush: {partition: end offset after our
        last acknowledged record}. Raises ``RunnerError`` if any of them failed."""
        try:
            self.conn.send(("flush", timeout))
            if not self.waiting(timeout + ANSWER_MARGIN_S):
                raise RunnerError(f"the Kafka producer process of {self.servers} did not answer a flush "
                                  f"within {timeout + ANSWER_MARGIN_S:g} s")
            answer = self.conn.recv()
        except (EOFError, OSError):
            raise RunnerError(self._gone()) from None
        if answer[0] == "failed":
            raise RunnerError(answer[1])
        return answer[1]

    def stop(self, wait: float) -> None:
        """Let records in flight land for at most ``wait`` s, then end the process."""
        self.close(timeout=wait + ANSWER_MARGIN_S, message=("stop", wait))

    def _gone(self) -> str:
        return f"the Kafka producer process of {self.servers} ended unexpectedly ({self.how_it_ended()})"


# --- the child ---------------------------------------------------------------------------
def main() -> None:
    conn = child_connection()
    try:
        servers, options, client_id, settings = conn.recv()
        try:
            producer, failure = kc.producer(servers, options, client_id, **settings), None
        except RunnerError as exc:
            producer, failure = None, str(exc)
        _serve(conn, producer, failure)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone (other errors end the process with their traceback)


def _serve(conn, producer, failure: str | None) -> None:
    futures: list = []
    try:
        while True:
            message = conn.recv()
            if message[0] == "send":
                if failure is None:
                    try:
                        topic = message[1]
                        for value, key, id in message[2]:
                            futures.append(producer.send(topic, value=value, key=key, headers=[(HEADER, id)]))
                    except Exception as exc:  # reported at the flush; nothing more is sent
                        failure = f"sending to Kafka topic {topic} failed: {exc!r}"
            elif message[0] == "flush":
                conn.send(_flush(producer, futures, message[1]) if failure is None else ("failed", failure))
                futures = []
            else:  # stop
                if producer is not None:
                    try:
                        producer.flush(timeout=message[1])
                    except KafkaError:
                        pass  # not acknowledged in time: the sink's read-back decides
                return
    finally:
        if producer is not None:
            try:
                producer.close(timeout=0)
            except KafkaError:
                pass  # kafka-python's close raises when sends are still pending


def _flush(producer, futures: list, timeout: float) -> tuple:
    try:
        producer.flush(timeout=timeout)
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.get(timeout=0)  # raises the send's own error
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    except Exception as exc:
        return ("failed", f"{exc!r}")
    return ("flushed", ends)


if __name__ == "__main__":
    run_child(main)
