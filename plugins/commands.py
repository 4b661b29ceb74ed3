"""Commands the built-in plugins add to ``runner``: the development broker and the click generator."""

from runner import hookimpl


@hookimpl
def runner_register_commands(subparsers):
    from plugins import bench, broker, clickstream

    broker.add_command(subparsers)
    clickstream.add_command(subparsers)
    bench.add_command(subparsers)
