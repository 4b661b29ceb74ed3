"""Event times: the cached path for the usual form must say what the full parser says."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import times
from runner.times import InvalidTime, duration_ms, format_duration, parse_event_time

USUAL = "2026-11-24T08:00:17.123Z"


def parsed(text: str):
    try:
        return parse_event_time(text)
    except InvalidTime as exc:
        return type(exc), str(exc)


def uncached(text: str):
    times._minute_cache.clear()
    times._day_cache.clear()
    return parsed(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 23), st.sampled_from("0159.:Zz+T ٣x")), max_size=3))
def test_a_time_near_the_usual_form_parses_alike_with_its_minute_cached(edits):
    text = list(USUAL)
    for position, char in edits:
        text[position] = char
    text = "".join(text)
    expected = uncached(text)
    parsed(USUAL)  # caches the minute 2026-11-24T08:00:
    parsed(text)  # and the text's own minute, when it has one
    assert parsed(text) == expected


def test_the_usual_form_is_read_to_the_millisecond():
    assert uncached(USUAL) == parsed(USUAL) == 1795507217123
    assert parsed("2026-11-24T08:00:59.999Z") == 1795507259999
    assert parsed("2026-11-24T08:00:60.000Z")[0] is InvalidTime


def test_a_time_before_1970_is_refused_however_often_it_is_read():
    first = uncached("1969-12-31T23:59:58.000Z")
    assert first[0] is InvalidTime
    assert parsed("1969-12-31T23:59:59.999Z")[0] is InvalidTime


@pytest.mark.parametrize("ms, text", [(300_000, "5m"), (7_200_000, "2h"), (90_000, "90s"), (1_500, "1500ms"),
                                      (0, "0ms")])
def test_a_duration_is_shown_in_the_largest_unit_that_holds_it_whole(ms, text):
    assert format_duration(ms) == text and duration_ms(text) == ms
