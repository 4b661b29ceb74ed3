"""The ``runner`` command line (CONTRACT section 2)."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from runner import config, plugins, signals
from runner.components import ConfigError, RunnerError
from runner.display import silence


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        if not getattr(args, "takes_signals", False):  # it has no handlers of its own: Python's, now
            signals.release()
        status = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone is seen here, not in the flush at exit
        return status
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a second stop signal (or Python's Ctrl+C)
        return 128 + (exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT)
    except BrokenPipeError:  # standard output's reader is gone (runner plugins | head)
        silence()
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Run YAML stream pipelines of pluggable stages.")
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline until stopped (or to the end of its input)")
    _pipeline_arguments(run)
    run.add_argument("--until-end", action="store_true", help="stop at the end of the input present at start")
    run.add_argument("--drain", action="store_true",
                     help="like --until-end, then close every open window and session (for good)")
    run.set_defaults(func=cmd_run, takes_signals=True)  # the runner takes the ones held at start

    validate = sub.add_parser("validate", help="check a pipeline file and every plugin's config")
    _pipeline_arguments(validate)
    validate.set_defaults(func=cmd_validate)

    plugs = sub.add_parser("plugins", help="list sources, stages and sinks with their config keys")
    plugs.add_argument("pipeline", nargs="?",
                       help="a pipeline file: the modules it names under plugins: are listed too (it must be valid)")
    plugs.add_argument("--schema", action="store_true", help="print the generated pipeline JSON Schema instead")
    plugs.set_defaults(func=cmd_plugins)

    state = sub.add_parser("state", help="inspect or delete a pipeline's persisted state")
    state.set_defaults(func=lambda args: _usage(state, "state needs an action: dump or reset"))
    state_sub = state.add_subparsers(metavar="ACTION")
    dump = state_sub.add_parser("dump", help="print the last checkpoint as JSON")
    _pipeline_arguments(dump)
    dump.set_defaults(func=cmd_state_dump)
    reset = state_sub.add_parser("reset", help="delete the pipeline's state")
    _pipeline_arguments(reset)
    reset.add_argument("--yes", action="store_true", help="do not ask")
    reset.set_defaults(func=cmd_state_reset)

    _plugin_commands(plugins.build_manager(), sub)
    return parser


def _plugin_commands(pm, sub) -> None:
    """Let each plugin add its commands; one that fails (a name taken, its own error) is
    left out with a warning naming it, and the other commands work."""
    for impl in pm.hook.runner_register_commands.get_hookimpls():
        names, listed = dict(sub.choices), len(sub._choices_actions)
        try:
            impl.function(*[{"subparsers": sub}[name] for name in impl.argnames])
        except Exception as exc:
            plugins.warn_plugin(f"plugin {pm.get_name(impl.plugin)}: runner_register_commands raised "
                                f"{type(exc).__name__}: {exc}: its commands are left out")
            sub.choices.clear()  # and whatever it added before it raised (argparse keeps no other record)
            sub.choices.update(names)
            del sub._choices_actions[listed:]


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="the pipeline YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a YAML value, e.g. --set checkpoint.every_events=500 (repeatable)")


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_help(sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return 2


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def cmd_run(args) -> int:
    from runner.engine import Runner

    pipeline = config.load(args.pipeline, args.overrides)
    return Runner(pipeline, until_end=args.until_end, drain=args.drain).run()


def cmd_validate(args) -> int:
    from runner.dump import state_refusal

    pipeline = config.load(args.pipeline, args.overrides)
    print(f"{args.pipeline}: valid pipeline {pipeline.settings['name']!r} "
          f"({_count(len(pipeline.settings['stages']), 'stage')}, {_count(len(pipeline.settings['sinks']), 'sink')})")
    refusal = state_refusal(pipeline)  # the file is valid: its state is another matter, said apart
    if refusal:
        print(f"WARNING: 'runner run' would refuse its stored state: {refusal}", file=sys.stderr)
    return 0


def cmd_plugins(args) -> int:
    registry = config.load(args.pipeline).registry if args.pipeline else plugins.load()
    if args.schema:
        print(json.dumps(config.pipeline_schema(registry), indent=2))
        return 0
    for line in _common_keys():
        print(line)
    for kind in ("sources", "stages", "sinks"):
        print(f"{kind}:")
        for name, cls in sorted(registry.kind(kind).items()):
            schema = cls.config_schema
            once = " (exactly once)" if getattr(cls, "exactly_once", False) else ""
            print(f"  {name:<18} from {registry.origins[cls]}{once}")
            if schema.get("description"):
                print(f"      {schema['description']}")
            required = set(schema.get("required", ()))
            for key, prop in schema.get("properties", {}).items():
                description = prop.get("description", "")
                if key in required:
                    description += " (required)"
                elif "(default" not in description:  # some say what their default means themselves
                    description += f" (default {json.dumps(prop.get('default'))})"
                print(f"      {key:<18} {description.strip()}")
    return 0


def _common_keys() -> list[str]:
    """What every component takes beside its own keys (``config.SECTIONS``), as lines."""
    props = config.top_schema()["properties"]
    lines = ["keys every component takes beside its own:"]
    for section, (_, common) in config.SECTIONS.items():
        keys = props[section]["items"]["properties"] if section in ("stages", "sinks") else props[section]["properties"]
        where = f"each of {section}:" if section in ("stages", "sinks") else f"{section}:"
        described = ", ".join(f"{key} ({keys[key]['description']})" for key in common)
        lines.append(f"  {where:<18} {described}")
    return lines


def cmd_state_dump(args) -> int:
    from runner.dump import dump_text

    pipeline = config.load(args.pipeline, args.overrides)
    if _in_memory(pipeline, args):
        return 2
    print(dump_text(pipeline))
    return 0


def cmd_state_reset(args) -> int:
    from runner.dump import reset_state

    pipeline = config.load(args.pipeline, args.overrides)
    if _in_memory(pipeline, args):
        return 2
    path = pipeline.settings["state"]["path"]
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"refusing to delete {path} without --yes (no terminal to ask on)", file=sys.stderr)
            return 2
        if input(f"delete the state of {pipeline.settings['name']} at {path}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 2
    print(f"deleted {path}" if reset_state(pipeline) else f"no state at {path}")
    return 0


def _in_memory(pipeline, args) -> bool:
    """The pipeline keeps its state in memory (said on stderr): there is none to dump or reset."""
    if pipeline.settings["state"]["backend"] != "memory":
        return False
    print(f"{args.pipeline}: state.backend is memory: nothing is persisted", file=sys.stderr)
    return True

