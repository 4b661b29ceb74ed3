"""A pipeline's ``plugins:`` modules with an author's mistake in them: one error line naming
the module (and class) and what is wrong, exit 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STAGE = """
from runner import hookimpl
from runner.components import Stage

class {cls}(Stage):
{body}

@hookimpl
def runner_register_stages():
    return [{cls}]
"""

MODULES = {
    "misspelled_hook": (
        "from runner import hookimpl\n\n@hookimpl\ndef runner_register_stage():\n    return []\n",
        'p.yaml:2: plugin misspelled_hook: unknown hook "runner_register_stage"; '
        'did you mean "runner_register_stages"?'),
    "raises_on_import": (
        'raise RuntimeError("no settings for me")\n',
        "p.yaml:2: plugins: cannot import 'raises_on_import': it raised RuntimeError: no settings for me"),
    "typeless": (
        STAGE.format(cls="NoType", body="    pass"),
        "p.yaml:2: plugin typeless: stage class typeless.NoType has no `type` "
        "(a string: the name pipelines give it as type:)"),
    "bad_schema": (
        STAGE.format(cls="Misspelled", body='    type = "misspelled"\n    config_schema = '
                     '{"type": "object", "properties": {"field": {"type": "strng"}}}'),
        "p.yaml:2: plugin bad_schema: stage class bad_schema.Misspelled: config_schema['properties']['field']"
        "['type'] is not a valid JSON Schema: 'strng' is not a JSON Schema type "
        "(string, number, integer, boolean, object, array, null)"),
    "open_schema": (
        STAGE.format(cls="Open", body='    type = "open"\n    config_schema = '
                     '{"type": "object", "properties": {"x": {"type": "integer", "default": 1, "description": "x"}}}'),
        "p.yaml:2: plugin open_schema: stage class open_schema.Open: config_schema must be an object that refuses "
        'unknown keys ("type": "object", "additionalProperties": false: runner.schema.obj builds one), so a '
        "misspelled key is an error"),
    "undeclared_default": (
        STAGE.format(cls="Vague", body='    type = "vague"\n    config_schema = {"type": "object", '
                     '"additionalProperties": False, "properties": {"x": {"type": "integer", "description": "x"}}}'),
        "p.yaml:2: plugin undeclared_default: stage class undeclared_default.Vague: config_schema property 'x' "
        "has neither a default nor a place in required"),
    "returns_one_class": (
        STAGE.format(cls="Single", body='    type = "single"').replace("return [Single]", "return Single"),
        "p.yaml:2: plugin returns_one_class: runner_register_stages returned <class 'returns_one_class.Single'>, "
        "not a list of Stage subclasses"),
    "hookless": (
        "def runner_register_stages():  # no @hookimpl\n    return []\n",
        "p.yaml:2: plugins: module 'hookless' has no hooks (functions marked @runner.hookimpl, named as in "
        "runner.hookspecs): name the module that has them"),
    "raises_on_register": (
        "from runner import hookimpl\n\n@hookimpl\ndef runner_register_sinks():\n    return 1 / 0\n",
        "p.yaml:2: plugin raises_on_register: runner_register_sinks raised ZeroDivisionError: division by zero"),
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_broken_plugin_module_is_one_line_naming_it(tmp_path, module):
    text, expected = MODULES[module]
    (tmp_path / f"{module}.py").write_text(text)
    (tmp_path / "p.yaml").write_text(f"name: p\nplugins: [{module}]\nsource: {{type: file, path: e.jsonl}}\n"
                                     "dlq: {type: jsonl, path: d.jsonl}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    for command in ("validate", "run"):
        proc = subprocess.run([sys.executable, "-m", "runner", command, "p.yaml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr.splitlines()) == (2, [expected]), proc.stderr


def test_every_built_in_config_schema_is_a_valid_declaration():
    # a run does not check the built-ins' schemas (it would cost every start 50 ms): this does
    import jsonschema

    from runner import plugins

    registry = plugins.load()
    classes = [cls for kind in plugins.KINDS for cls in registry.kind(kind).values()]
    assert len(classes) >= 11
    for cls in classes:
        jsonschema.Draft202012Validator.check_schema(cls.config_schema)
        assert plugins._declaration_problems(cls.config_schema) == [], cls  # the rules plugins are held to


def installed(site: Path, name: str, module: str, text: str) -> None:
    """What ``pip install`` of a package with a plugin module leaves behind in ``site``."""
    dist = site / f"{name}-1.0.dist-info"
    site.mkdir(exist_ok=True)
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[runner]\n{name} = {module}\n")
    (site / f"{module}.py").write_text(text)


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_an_installed_plugin_that_cannot_be_imported_is_left_out_with_a_warning(tmp_path):
    installed(tmp_path, "broken-dep", "broken_dep", "import not_installed_dependency_of_it\n")
    warning = ("WARNING: installed plugin broken-dep (broken_dep, of broken-dep 1.0) cannot be loaded "
               "(ModuleNotFoundError: No module named 'not_installed_dependency_of_it'): it is left out")
    proc = run_cli(tmp_path, "plugins")
    assert proc.returncode == 0 and "validate           from plugins.stages.validate" in proc.stdout
    assert proc.stderr.splitlines() == [warning]  # once, though the manager is built twice
    proc = run_cli(tmp_path, "validate", "pipelines/basic.yaml")
    assert (proc.returncode, proc.stderr.splitlines()) == (0, [warning])


def test_plugin_commands_that_fail_are_left_out_and_the_others_work(tmp_path):
    installed(tmp_path, "takes-run", "takes_run", (
        "from runner import hookimpl\n\n@hookimpl\ndef runner_register_commands(subparsers):\n"
        "    subparsers.add_parser('run')\n"))
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0 and "state" in proc.stdout
    assert proc.stderr.splitlines() == ["WARNING: plugin takes-run: runner_register_commands raised ArgumentError: "
                                        "argument COMMAND: conflicting subparser: run: its commands are left out"]


def test_what_a_failing_command_plugin_added_before_it_raised_is_taken_back(tmp_path):
    installed(tmp_path, "half", "half_command", (
        "from runner import hookimpl\n\n@hookimpl\ndef runner_register_commands(subparsers):\n"
        "    subparsers.add_parser('half', help='half done')\n    raise RuntimeError('oops')\n"))
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0 and "half" not in proc.stdout and "validate" in proc.stdout
    assert proc.stderr == ("WARNING: plugin half: runner_register_commands raised RuntimeError: oops: "
                           "its commands are left out\n")


def test_a_plugin_shadowed_by_a_broken_copy_earlier_on_the_path_is_not_loaded(tmp_path):
    stage = STAGE.format(cls="Dedup", body='    type = "dedup"\n    config_schema = {"type": "object", '
                                            '"additionalProperties": False, "properties": {}}')
    installed(tmp_path / "new", "dedup", "dedup_stage", stage)
    installed(tmp_path / "old", "dedup", "dedup_old", "raise ImportError('stale')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "old"), str(tmp_path / "new"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "runner", "plugins"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "dedup " not in proc.stdout  # not the copy the warning did not name
    assert proc.stderr.startswith("WARNING: installed plugin dedup (dedup_old, of dedup 1.0) cannot be loaded")


def test_two_installed_plugins_of_one_type_are_an_error_of_no_line_of_the_pipeline(tmp_path):
    for name in ("first", "second"):
        installed(tmp_path, name, f"{name}_stage", STAGE.format(cls="Dedup", body='    type = "dedup"'))
    proc = run_cli(tmp_path, "validate", "pipelines/basic.yaml")
    first, second = "first (first_stage.Dedup)", "second (second_stage.Dedup)"  # in the order they are found
    assert (proc.returncode, proc.stderr) in [(2, f"two plugins register the stage type 'dedup': {a} and {b}\n")
                                              for a, b in ((first, second), (second, first))], proc.stderr
