"""Fuzzing from the server's own OpenAPI description: schemathesis against a live server.

Every generated request, valid or not, must get an answer that is not a 5xx and that matches
the documented status codes, content type and response schema. Bounded, so CI stays fast.
Both generation modes run: valid requests, and requests that break the description on purpose
(wrong JSON types, missing fields), which must be 4xx. (schemathesis' pytest plugin does not
run under this pytest; its Python API does.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

#: Hypothesis examples per operation; the API has about fifteen operations.
EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(operation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()


def test_no_server_errors_and_documented_answers(server):
    """Any request the description admits (and many it does not) gets a documented, non-5xx answer."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    # The description is complete: the infer routes (plain Starlette routes) are in it too.
    assert {"/v2/models/{model}/infer", "/v2/repository/models/{model}/load", "/v2/health/ready"} <= paths
    negative = 0
    for operation in operations:
        _fuzz(operation, GenerationMode.POSITIVE)
        try:
            _fuzz(operation, GenerationMode.NEGATIVE)
            negative += 1
        except Unsatisfiable:  # nothing to break: no parameters and no body (GET /v2, health)
            pass
    assert negative >= 5, "negative fuzzing reached too few operations"
