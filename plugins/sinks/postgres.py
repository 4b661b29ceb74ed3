"""The ``postgres`` sink (and PostgreSQL DLQ): exactly once by upsert on the output's id.

Each output is one row of ``table``, keyed by its id. ``deliver`` only buffers; ``flush``
writes the buffer in one transaction (COPY into a temporary table, then ``INSERT ... ON
CONFLICT (id) DO UPDATE``) and commits it. Writing an output again replaces its row with
the same (or a newer) record, so a redelivery after a crash or a failed flush never makes
a second row, and the sink needs no state of its own. No transaction stays open between
checkpoints.

The table (created if missing; also when it is dropped while the sink runs, with a warning on
stderr: the rows it held are gone)::

    id           text PRIMARY KEY      -- the output's id
    stage        text NOT NULL         -- the stage that produced it
    key          jsonb                 -- results: the result's key (JSON null for a global
                                       -- window); DLQ records: SQL NULL
    window_start timestamptz           -- window and session results, else NULL
    window_end   timestamptz
    kind         text NOT NULL         -- "result" or "dlq"
    record       jsonb NOT NULL        -- the whole result or DLQ record
    updated_at   timestamptz NOT NULL DEFAULT now()  -- when the row last changed
"""

from __future__ import annotations

import datetime as _dt
import re
import sys
import time

from runner import hookimpl
from runner.components import RunnerError, Sink
from runner.display import show
from runner.schema import obj

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 20000  # a deliver that buffers more than this many outputs writes them at once
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
MAX_IDENTIFIER = 63  # PostgreSQL cuts longer names silently

# column -> (its type as format_type() names it, its definition)
COLUMNS = {
    "id": ("text", "text PRIMARY KEY"),
    "stage": ("text", "text NOT NULL"),
    "key": ("jsonb", "jsonb"),
    "window_start": ("timestamp with time zone", "timestamptz"),
    "window_end": ("timestamp with time zone", "timestamptz"),
    "kind": ("text", "text NOT NULL"),
    "record": ("jsonb", "jsonb NOT NULL"),
    "updated_at": ("timestamp with time zone", "timestamptz NOT NULL DEFAULT now()"),
}
WRITTEN = ("id", "stage", "key", "window_start", "window_end", "kind", "record")
# the temporary table of one connection, always named with its schema: an unqualified name
# would find a table of the same name in pg_temp first, or this one instead of such a table
INCOMING = "pg_temp.runner_postgres_sink_incoming"

# the JSON escape of NUL, which jsonb refuses (it cannot hold it in text): not after a backslash
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _psycopg():
    import psycopg  # imported on use: it costs every runner start ~0.1 s otherwise

    return psycopg


class PostgresSink(Sink):
    """Upserts every output into a PostgreSQL table by its id; also a DLQ type."""

    type = "postgres"
    exactly_once = True
    config_schema = obj({
        "dsn": {
            "type": "string", "minLength": 1, "default": DEFAULT_DSN,
            "description": "libpq connection string or URI (postgresql://user@host:port/db); write "
                           "${POSTGRES_DSN} or ${POSTGRES_PASSWORD} in the YAML to take it, or a part, "
                           "from the environment",
        },
        "table": {
            "type": "string", "pattern": IDENTIFIER, "x-expected": "a table name like results or myschema.results",
            "description": "the table to upsert into, optionally schema-qualified; created (with its schema) "
                           "if missing; read as an unquoted SQL name, so folded to lower case",
        },
        "connect_timeout_s": {
            "type": "integer", "minimum": 2, "default": 10,
            "description": "seconds to wait for the server when connecting, and for a lock on the table "
                           "when writing, before failing (and retrying with backoff)",
        },
    }, required=("table",), description="Upserts results (or dead letters) into a PostgreSQL table by id, exactly once "
                                        "across crashes.")

    @classmethod
    def lint(cls, config):
        problems = []
        for part in config["table"].split("."):
            if len(part.encode()) > MAX_IDENTIFIER:
                problems.append((("table",), f"{part!r} is longer than PostgreSQL's {MAX_IDENTIFIER} characters"))
        try:
            _psycopg().conninfo.conninfo_to_dict(config["dsn"])
        except Exception as exc:
            problems.append((("dsn",), f"not a PostgreSQL connection string: {' '.join(str(exc).split())}"))
        return problems

    def __init__(self, config, context):
        super().__init__(config, context)
        self.parts = tuple(config["table"].lower().split("."))
        self.table = ".".join(self.parts)
        self.timeout = int(config["connect_timeout_s"])
        self.conn = None
        self.buffer: dict[str, tuple] = {}  # id -> row, the latest delivery of each id
        self.failure: Exception | None = None  # a write since the last recover failed

    # --- the Sink contract -------------------------------------------------------------------
    def open(self, state) -> None:
        """Connect, create the table if missing and check its columns. Raises ``RunnerError``
        when the server does not answer within ``connect_timeout_s`` or the table is
        incompatible. ``state`` is unused: the upsert needs none."""
        self.params = self._params()
        self.where = _where(self.params)
        self._connect()

    def deliver(self, outputs: list) -> None:
        """Buffer the outputs (a redelivered id replaces its earlier delivery); a buffer of
        more than ``BATCH`` outputs is written at once."""
        buffer = self.buffer
        for out in outputs:
            buffer[out.id] = _row(out)
        if len(buffer) > BATCH:
            self._write()

    def flush(self) -> None:
        """Write and commit everything buffered in one transaction. Raises ``RunnerError``
        (naming the server and the error) when that, or any write since the last
        ``recover``, failed: the runner then recovers and delivers again."""
        if self.failure is not None:
            raise RunnerError(f"an earlier write to {self.table} at {self.where} failed: {self.failure}")
        self._write()
        return None

    def recover(self) -> None:
        """Forget the buffer and any failure (the runner delivers every unconfirmed output
        again); roll back, or drop a broken connection so that the next write reconnects."""
        self.buffer = {}
        self.failure = None
        conn = self.conn
        if conn is not None:
            try:
                if conn.closed or conn.broken:
                    raise OSError("connection lost")
                conn.rollback()
            except Exception:
                self._drop()

    def close(self) -> None:
        """Close the connection; anything buffered is in the outbox, delivered at the next start."""
        self._drop()

    # --- internals ---------------------------------------------------------------------------
    def _params(self) -> dict:
        psycopg = _psycopg()
        try:
            params = psycopg.conninfo.conninfo_to_dict(self.config["dsn"])
        except psycopg.Error as exc:
            raise RunnerError(f"sink {self.name}: dsn is not a PostgreSQL connection string: "
                              f"{' '.join(str(exc).split())}") from None
        params["connect_timeout"] = self.timeout
        params.setdefault("application_name", f"runner-{self.context.pipeline}-{self.name}"[:63])
        # a dead server is noticed (and the write retried) instead of waited on forever
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 30)
        params.setdefault("keepalives_interval", 5)
        params.setdefault("keepalives_count", 3)
        params.setdefault("tcp_user_timeout", max(self.timeout, 30) * 1000)
        return params

    def _connect(self):
        """A fresh connection with the table ready and the temporary table created."""
        psycopg = _psycopg()
        self._drop()
        started = time.monotonic()
        try:
            conn = psycopg.connect(**self.params)
        except psycopg.Error as exc:
            message = " ".join(str(exc).split())
            if isinstance(exc, psycopg.errors.ConnectionTimeout) or time.monotonic() - started >= self.timeout:
                message += f" (no answer within connect_timeout_s = {self.timeout})"
            hint = "" if re.search(r"authentication|password|does not exist|permission|SSL", message) else \
                "; is it running?"
            raise RunnerError(f"cannot connect to PostgreSQL at {self.where}: {message}{hint}") from None
        try:
            conn.execute(f"SET lock_timeout = {self.timeout * 1000}")
            self._prepare_table(conn)
            conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {INCOMING} "
                         f"(id text, stage text, key jsonb, window_start timestamptz, window_end timestamptz, "
                         f"kind text, record jsonb) ON COMMIT DELETE ROWS")
            conn.commit()
        except RunnerError:
            conn.close()
            raise
        except psycopg.Error as exc:
            conn.close()
            raise RunnerError(f"cannot prepare table {self.table} at {self.where}: {' '.join(str(exc).split())}") \
                from None
        self.conn = conn
        return conn

    def _prepare_table(self, conn) -> None:
        """Create the table (and its schema) if missing, then check that it can take our rows."""
        sql = _psycopg().sql
        name = sql.Identifier(*self.parts)
        if len(self.parts) == 2 and conn.execute("SELECT to_regnamespace(%s)",
                                                 [sql.Identifier(self.parts[0]).as_string(conn)]).fetchone()[0] is None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.parts[0])))
        oid = conn.execute("SELECT to_regclass(%s)::oid", [name.as_string(conn)]).fetchone()[0]
        if oid is None:
            columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(definition))
                                         for column, (_, definition) in COLUMNS.items())
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(name, columns))
            oid = conn.execute("SELECT to_regclass(%s)::oid", [name.as_string(conn)]).fetchone()[0]
        problems = _incompatibilities(conn, oid)
        if problems:
            raise RunnerError(f"table {self.table} at {self.where} exists but cannot take this sink's rows: "
                              f"{'; '.join(problems)}; drop or rename it, or choose another table")
        # named with the schema it was found in, as pg_temp (searched first) gets a table of ours
        name = sql.Identifier(*conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                                            "ON n.oid = c.relnamespace WHERE c.oid = %s", [oid]).fetchone())
        self.upsert = sql.SQL(
            "INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM {incoming} "
            "ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now() "
            "WHERE ({current}) IS DISTINCT FROM ({excluded})"
        ).format(
            table=name,
            columns=sql.SQL(", ").join(map(sql.Identifier, WRITTEN)),
            incoming=sql.Identifier(*INCOMING.split(".")),
            updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in WRITTEN[1:]),
            current=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in WRITTEN[1:]),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in WRITTEN[1:]),
        )

    def _write(self) -> None:
        """Write and commit the buffer in one transaction; on failure remember it and raise."""
        if not self.buffer:
            return
        psycopg = _psycopg()
        rows = list(self.buffer.values())
        try:
            try:
                self._write_rows(rows)
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                # the table (or its schema) was dropped meanwhile: a new connection creates it again
                show(f"WARNING: sink {self.name}: table {self.table} at {self.where} was dropped while the "
                     f"runner wrote to it: creating it again; the rows it held are gone (only outputs not yet "
                     f"confirmed are written again)", sys.stderr)
                self._drop()
                self._write_rows(rows)
        except (psycopg.Error, RunnerError) as exc:
            self.failure = exc
            self._abandon()
            if isinstance(exc, RunnerError):
                raise
            raise RunnerError(f"writing {len(rows)} outputs to table {self.table} at {self.where} failed: "
                              f"{' '.join(str(exc).split())}") from exc
        self.buffer = {}

    def _write_rows(self, rows: list) -> None:
        """Write and commit ``rows`` in one transaction (connecting first when not connected)."""
        conn = self.conn if self.conn is not None and not self.conn.closed else self._connect()
        with conn.cursor() as cur:
            with cur.copy(f"COPY {INCOMING} ({', '.join(WRITTEN)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(self.upsert)
        conn.commit()

    def _abandon(self) -> None:
        """After a failed write: roll back, or drop the connection when that fails too."""
        conn = self.conn
        if conn is None:
            return
        try:
            conn.rollback()
        except Exception:
            self._drop()

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _incompatibilities(conn, oid: int) -> list[str]:
    """Why the relation ``oid`` cannot take our upserts: missing or retyped columns, other
    required columns, no unique index on exactly ``id`` or a deferrable one; empty when it can."""
    kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s", [oid]).fetchone()[0]
    if kind not in ("r", "p"):
        return ["it is not a table (a view or another kind of relation)"]
    found = {name: (typ, notnull, has_default) for name, typ, notnull, has_default in conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef OR attidentity <> '' "
        "OR attgenerated <> '' FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", [oid])}
    problems = []
    for column, (typ, _) in COLUMNS.items():
        if column not in found:
            problems.append(f"no column {column} ({typ})")
        elif found[column][0] != typ:
            problems.append(f"column {column} is {found[column][0]}, not {typ}")
    for column in ("key", "window_start", "window_end"):
        if column in found and found[column][1]:
            problems.append(f"column {column} is NOT NULL, but is null in some rows")
    for column, (_, notnull, has_default) in found.items():
        if column not in COLUMNS and notnull and not has_default:
            problems.append(f"column {column} is NOT NULL without a default, and this sink does not write it")
    unique_on_id, deferrable = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE NOT i.indimmediate) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL "
        "AND i.indexprs IS NULL AND a.attname = 'id'", [oid]).fetchone()
    if not unique_on_id:
        problems.append("no primary key (or unique index) on exactly id")
    elif deferrable:  # ON CONFLICT (id) refuses every upsert when any of them is deferrable
        problems.append("the primary key (or unique constraint) on id is DEFERRABLE, which ON CONFLICT cannot use")
    return problems


def _row(out) -> tuple:
    """The written columns of one output; JSON as text for jsonb."""
    record = _jsonb_text(out.value.decode())
    if out.kind == "dlq":
        return (out.id, out.stage, None, None, None, out.kind, record)
    data = out.data()
    key = _jsonb_text(out.key.decode()) if out.key is not None else None
    return (out.id, out.stage, key, _time(data.get("window_start")), _time(data.get("window_end")), out.kind, record)


def _jsonb_text(text: str) -> str:
    """jsonb refuses the escape of NUL: it becomes U+FFFD (DLQ records keep the exact bytes in
    ``payload_b64``)."""
    return _NUL_ESCAPE.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


def _time(value):
    """A window bound (``YYYY-MM-DDThh:mm:ss.sssZ``) as a datetime; None when absent or not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _where(params: dict) -> str:
    """``host:port/db`` of a connection string, for messages."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "postgres"
    return f"{host}:{port}/{db}"


@hookimpl
def runner_register_sinks():
    return [PostgresSink]
