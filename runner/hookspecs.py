"""The plugin author's manual: every hook the runner calls.

A plugin is a module (or a package exposed by an entry point in group ``runner``, or a
module named in a pipeline's ``plugins:`` list) with functions decorated by
``runner.hookimpl`` and named after the specifications below. The built-in sources,
stages and sinks in ``plugins/`` are registered through these same hooks.

Components are classes. Each carries ``type`` (the name users write in YAML) and
``config_schema`` (a JSON Schema of its YAML keys); see ``runner.components`` for the
base classes and what each method promises. Two plugins that register one ``type``
is an error that names both.

The runner calls each plugin's register hook itself, one plugin at a time, so that a
mistake is reported as that plugin's: an exception raised there, or a returned value that
is not a list of component classes, is an error naming the plugin (for an installed plugin,
of every pipeline; for a module under ``plugins:``, of that line of the pipeline), except
in ``runner_register_commands``, whose plugin is left out with a warning. pluggy's ordering
options (``tryfirst``, ``trylast``, hook wrappers) have no effect on these hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("runner")


@hookspec
def runner_register_sources():
    """Called each time a pipeline is loaded (``run``, ``validate``, ``state``) and by
    ``runner plugins``, on every registered plugin in turn.

    Return a list of ``runner.components.Source`` subclasses (or None).
    """


@hookspec
def runner_register_stages():
    """Called each time a pipeline is loaded (``run``, ``validate``, ``state``) and by
    ``runner plugins``, on every registered plugin in turn.

    Return a list of ``runner.components.Stage`` subclasses (or None).
    """


@hookspec
def runner_register_sinks():
    """Called each time a pipeline is loaded (``run``, ``validate``, ``state``) and by
    ``runner plugins``, on every registered plugin in turn.

    Return a list of ``runner.components.Sink`` subclasses (or None). A sink type also
    serves as a dead letter queue type (``dlq: {type: ...}``).
    """


@hookspec
def runner_register_commands(subparsers):
    """Called once when the command line is built, before arguments are parsed: so only
    for installed plugins (entry point group ``runner``), not for a module named in a
    pipeline's ``plugins:``, which is loaded with the pipeline.

    ``subparsers`` is the ``argparse`` sub-parser action of ``runner``: add commands with
    ``subparsers.add_parser(name, help=...)`` and ``set_defaults(func=callable)``; the
    callable gets the parsed ``argparse.Namespace`` and returns the exit code.
    Return nothing.
    """
