"""Display templates: checked against the fields of the results they show, before a run."""

import pytest

from runner.cli import main
from runner.display import render, template_problems
from tests.runner.test_cli import BASE, write

SESSIONS = """
  - type: session_window
    name: visits
    key_by: user_id
    gap: 10m
    aggregations: {pages: count}
    display: "{key}: {pages} pages in {duration_s:minutes} min"
"""
AGGREGATE = """
  - type: aggregate
    name: per_page
    key_by: page_url
    aggregations: {views: count}
    milestones: {views: 10}
    display: {line: "{key}: {views}", milestone: "{key} reached {value} {milestone}"}
"""
PIPELINE = (BASE.replace("stages:\n", "stages:" + SESSIONS + AGGREGATE)
            .replace("aggregations: {events: count}", "aggregations: {events: count}\n    display: '{window_start:hm} {events}'"))


def test_templates_that_use_their_results_fields_are_valid(tmp_path, capsys):
    path = write(tmp_path, PIPELINE)
    assert main(["validate", path]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("old, new, where, message", [
    ("display: '{window_start:hm} {events}'", "display: '{window_start:hm} {views}'", "stages[3].display",
     "no field 'views' in its results (they have events, id, key, stage, window_end, window_start)"),
    ("{duration_s:minutes} min", "{duration_s:minutes} min {path}", "stages[0].display", "no field 'path'"),
    ('line: "{key}: {views}"', 'line: "{key}: {views"', "stages[1].display.line",
     "cannot be displayed: expected '}' before end of string"),
    ("reached {value} {milestone}", "reached {value} {views}", "stages[1].display.milestone",
     "no field 'views' in its results (they have id, key, milestone, stage, value)"),
])
def test_a_template_naming_what_its_results_lack_is_refused_with_its_line(tmp_path, capsys, old, new, where, message):
    assert old in PIPELINE
    path = write(tmp_path, PIPELINE.replace(old, new))
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert f": {where}: {message}" in err


def test_what_the_check_allows_is_what_render_fills():
    fields = {"key": "/home", "views": 3, "top": [["/a", 2]]}
    template = "{key} {views:>3} {top[0]}"
    assert template_problems(template, fields) == []
    assert "?}" not in render(template, fields)
    assert template_problems("{key} {nope}", fields) and "{nope?}" in render("{key} {nope}", fields)
