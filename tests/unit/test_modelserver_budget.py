"""The REST budget charges large JSON decodes before they happen, and frees them after."""

from __future__ import annotations

import pytest

from modelserver.budget import CHARGED_BODY, BodyBudget, charging, decode_cost
from modelserver.json_text import parse_json_object
from modelserver.core.status import ServingError

ROWS = b'{"instances":[' + b",".join([b'{"x": 1.0}'] * (CHARGED_BODY // 10)) + b"]}"


def test_a_large_decode_holds_its_cost_until_the_block_ends() -> None:
    budget = BodyBudget(decode_cost(ROWS) + 1)
    with charging(budget):
        assert len(parse_json_object(ROWS)["instances"]) == CHARGED_BODY // 10
        assert budget.used == decode_cost(ROWS)
    assert budget.used == 0


def test_small_bodies_and_threads_outside_a_request_are_not_charged() -> None:
    budget = BodyBudget(1)
    with charging(budget):
        assert parse_json_object(b'{"instances": [1.0]}') == {"instances": [1.0]}
    assert len(parse_json_object(ROWS)["instances"]) == CHARGED_BODY // 10   # no budget in force


def test_a_decode_that_never_fits_is_413_and_one_that_does_not_fit_now_is_429() -> None:
    budget = BodyBudget(decode_cost(ROWS) - 1)
    with pytest.raises(ServingError) as never, charging(budget):
        parse_json_object(ROWS)
    assert never.value.http_status == 413 and budget.used == 0
    budget = BodyBudget(decode_cost(ROWS) + 10)
    assert budget.take(11)
    with pytest.raises(ServingError) as later, charging(budget):
        parse_json_object(ROWS)
    assert later.value.http_status == 429 and "retry later" in later.value.message
    assert budget.used == 11
