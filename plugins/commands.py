"""Commands the built-in plugins add to ``runner``: the development broker and the click generator."""

from runner import hookimpl


@hookimpl
def runner_register_commands(subparsers):
    from plugins import bench, broker, generate

    broker.add_command(subparsers)
    generate.add_command(subparsers)
    bench.add_command(subparsers)
