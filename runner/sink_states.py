"""Which committed state each sink of a pipeline starts from, when the pipeline's sinks
changed since its last checkpoint (added, removed, renamed, or of another type).

A sink is known by name and type (the state's meta "sink_types"; a state of an older runner
knows names only): one of another type under a name starts without the old one's state (a
DLQ switched from kafka to jsonl). With the outbox empty nothing of ours waits at any sink:
every sink without a state is new. With outputs waiting, a known sink may have been given
some before its first confirmation, so it is not new (every start commits the sinks it has
before it delivers anything), while a sink of a name the state does not know is new, unless
sinks are gone too: then the one gone sink of its type was renamed to it, and it takes over
that sink's state and waiting outputs, so what that one was given and not confirmed is
written once. Which sink became which must be plain (one gone, one new, of a type the state
knows), or the start is refused.
"""

from __future__ import annotations

import sys

from runner.components import RunnerError


def sink_states(store, sinks: dict, result_sinks: tuple, pipeline: str, number: int, outbox: list,
                log) -> tuple[dict, list[str], dict]:
    """Each sink's committed state (None: none), the sinks that no run of this state gave
    anything (see ``Sink.fresh_start``), and the renames {old name: new name}. ``sinks`` are
    the pipeline's, by name; ``outbox`` is the stored one, as (seq, Output); ``number`` the
    stored checkpoint's. Sets each sink's ``context.fresh_state`` and ``nothing_waiting``,
    and says on stderr (``log``) what a change of sinks does."""
    stored = store.meta("sinks", {}) or {}
    types = store.meta("sink_types")
    known_names = types if types is not None else dict.fromkeys(stored)
    gone = {name: kind for name, kind in known_names.items() if name not in sinks}
    renames = _renames(sinks, types, gone, known_names) if outbox and gone else {}
    states, new = {}, []
    for name, sink in sinks.items():
        state, known = stored.get(name), name in known_names
        old = next((old for old, now in renames.items() if now == name), None)
        if old is not None:
            state, known = stored.get(old), True
            log(f"[{pipeline}] sink {name} takes over the committed state and the waiting outputs of sink "
                f"{old}, which this pipeline no longer has (renamed?)", file=sys.stderr)
        elif known and types is not None and types[name] != sink.type:
            log(f"[{pipeline}] sink {name} is a {sink.type} sink now, not {types[name]}: it starts "
                f"without the old one's committed state", file=sys.stderr)
            state, known = None, False
        elif not known:
            state = None
        states[name] = state
        if state is None and (not outbox or not known):
            new.append(name)
    waiting = _waiting(outbox, renames, result_sinks)
    for name, sink in sinks.items():
        sink.context.fresh_state = number == 0
        sink.context.nothing_waiting = name in new or name not in waiting
    lost = [out for _, out in outbox if out.kind == "result"
            and any(target in gone and target not in renames for target in out.targets or gone)]
    if lost:
        names = sorted(set(gone) - set(renames))
        log(f"WARNING: {len(lost)} outputs of the outbox were meant for sink{'s' * (len(names) > 1)} "
            f"{', '.join(names)}, which this pipeline no longer has: they never reach "
            f"{'them' if len(names) > 1 else 'it'}", file=sys.stderr)
    return states, new, renames


def _waiting(outbox: list, renames: dict, result_sinks: tuple) -> set:
    """The sinks that outputs of the outbox are for (after ``renames``)."""
    names = set()
    for _, out in outbox:
        names.update(renames.get(name, name) for name in out.targets or result_sinks)
    return names


def _renames(sinks: dict, types: dict | None, gone: dict, known: dict) -> dict:
    """With outputs waiting and sinks gone: {gone sink: the new sink that takes its place};
    RunnerError when new sinks come beside gone ones and which became which is not plain
    (more than one of a type, or a state of an older runner, which kept no types)."""
    fresh = [name for name in sinks if name not in known]
    if fresh and types is None:
        raise RunnerError(f"sinks {', '.join(gone)} are gone and {', '.join(fresh)} are new while outputs wait "
                          f"in the outbox for the sinks the last run had, and this state (of an older runner) "
                          f"does not tell which became which: start once with the old sinks to deliver them")
    renames = {}
    for kind in set(gone.values()):
        olds = [name for name, was in gone.items() if was == kind]
        news = [name for name in fresh if sinks[name].type == kind]
        if len(olds) == 1 and len(news) == 1:
            renames[olds[0]] = news[0]
        elif news:
            raise RunnerError(f"sinks {', '.join(olds)} are gone and {', '.join(news)} are new, of type {kind}, "
                              f"while outputs wait in the outbox for the sinks the last run had: which became "
                              f"which is not plain; start once with the old sinks to deliver them, or rename "
                              f"one sink at a time")
    return renames
