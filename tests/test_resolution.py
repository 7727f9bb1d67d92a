"""Schema names from the ``_schema_name`` header: validated before any lookup."""

from __future__ import annotations

import pytest
from celery.app.task import Context

from tenant_schemas_celery.exceptions import InvalidSchemaName
from tenant_schemas_celery.resolution import schema_name_from_request, validate_schema_name


@pytest.mark.parametrize(
    "name", ["tenant1", "a", "x" * 63, "é" * 31, "Tenant-With Space", "public"]
)
def test_valid_names_pass(name):
    assert validate_schema_name(name) == name


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "expected a string, got NoneType"),
        (12, "expected a string, got int"),
        (b"tenant1", "expected a string, got bytes"),
        (["tenant1"], "expected a string, got list"),
        ("", "it is empty"),
        ("x" * 64, "64 bytes long"),
        ("é" * 32, "64 bytes long"),
        ("pg_catalog", "reserved by PostgreSQL"),
        ("PG_toast", "reserved by PostgreSQL"),
        ('x"; DROP SCHEMA public; --', "quote, backslash, semicolon"),
        ("it's", "quote, backslash, semicolon"),
        ("a\\b", "quote, backslash, semicolon"),
        ("a\x00b", "quote, backslash, semicolon"),
        ("a\nb", "quote, backslash, semicolon"),
        ("\ud800", "not valid UTF-8"),
    ],
)
def test_invalid_names_say_what_is_wrong(value, reason):
    with pytest.raises(InvalidSchemaName) as raised:
        validate_schema_name(value)
    assert reason in str(raised.value)
    assert str(raised.value).startswith("Invalid _schema_name header ")


def test_error_message_truncates_huge_values():
    with pytest.raises(InvalidSchemaName) as raised:
        validate_schema_name("y" * 100_000)
    assert len(str(raised.value)) < 250


def test_header_read_from_worker_request_and_from_eager_headers():
    assert schema_name_from_request(Context({"_schema_name": "t1"}), "public") == "t1"
    assert schema_name_from_request(Context(headers={"_schema_name": "t2"}), "public") == "t2"


def test_absent_header_means_default():
    assert schema_name_from_request(Context({}), "public") == "public"
    assert schema_name_from_request(Context(headers=None), "public") == "public"


def test_null_header_means_no_tenant_as_in_the_pypi_package():
    assert schema_name_from_request(Context({"_schema_name": None}), "public") == "public"
    assert schema_name_from_request(Context(headers={"_schema_name": None}), "public") == "public"


@pytest.mark.parametrize("value", [False, 0, b"tenant1", ["tenant1"]])
def test_other_non_string_headers_are_invalid(value):
    with pytest.raises(InvalidSchemaName):
        schema_name_from_request(Context({"_schema_name": value}), "public")
