"""Every error a client can see declares its own HTTP status and has one JSON shape."""

from __future__ import annotations

import http
import inspect

import pytest

from handler import errors
from handler.errors import ServiceError

ERROR_TYPES = [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, ServiceError) and obj is not ServiceError]
EXPECTED_STATUS = {"InvalidInput": 400, "NotFound": 404, "PayloadTooLarge": 413, "InputTooLong": 422,
                   "NothingToEmbed": 422, "InternalError": 500, "Overloaded": 503, "InsufficientMemory": 507,
                   "EngineUnavailable": 503}


def test_the_error_table_is_what_the_readme_documents():
    assert {t.__name__: t.status for t in ERROR_TYPES} == EXPECTED_STATUS


@pytest.mark.parametrize("error_type", ERROR_TYPES, ids=lambda t: t.__name__)
def test_each_error_has_a_real_status_and_the_one_json_shape(error_type):
    error = error_type("inputs[3] must be [instruction, sentence]; got a list of 1")
    assert error_type.__dict__["status"] == error.status  # declared on the class itself, not inherited
    assert http.HTTPStatus(error.status).phrase
    assert error.to_body() == {"code": error.status, "type": error_type.__name__,
                               "message": "inputs[3] must be [instruction, sentence]; got a list of 1"}


def test_an_error_type_without_a_status_cannot_be_defined():
    with pytest.raises(TypeError, match="must declare its HTTP status"):
        type("Forgotten", (ServiceError,), {})
