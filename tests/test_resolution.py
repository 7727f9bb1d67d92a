"""Schema names from the ``_schema_name`` header: validated before any lookup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.app.task import Context

from tenant_schemas_celery.exceptions import InvalidSchemaName, TenantConfigurationError
from tenant_schemas_celery.resolution import (
    header_flag,
    schema_name_from_request,
    validate_schema_list,
    validate_schema_name,
)


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


# Lists of schema names and header flags ----------------------------------------------


def test_a_schema_list_is_validated_in_order_without_duplicates():
    assert validate_schema_list("public") == ("public",)
    assert validate_schema_list(["a", "b", "a"]) == ("a", "b")
    assert validate_schema_list({"a"}) == ("a",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 1}, "tenant_schemas must be a list of schema names, got {'a': 1}."),
        (iter(["a"]), "tenant_schemas must be a list of schema names, got <list_iterator"),
        (["a", ["x"]], "tenant_schemas holds ['x'], not a usable schema name: expected a string"),
    ],
)
def test_a_malformed_schema_list_names_the_option(value, message):
    with pytest.raises(TenantConfigurationError) as raised:
        validate_schema_list(value)
    assert str(raised.value).startswith(message)


def test_a_list_of_tenants_takes_tenants_and_any_iterable():
    tenant = SimpleNamespace(schema_name="tenant1")
    assert validate_schema_list(tenant, "tenants", tenants=True) == ("tenant1",)
    names = (name for name in ["tenant2", "public"])
    assert validate_schema_list([tenant, *names], "tenants", tenants=True) == (
        "tenant1",
        "tenant2",
        "public",
    )
    for value in (b"tenant1", 5):
        with pytest.raises(TenantConfigurationError, match=r"^tenants must be a tenant, a schema"):
            validate_schema_list(value, "tenants", tenants=True)


@pytest.mark.parametrize(
    ("value", "flag"),
    [(True, True), (False, False), (None, False), (" TRUE ", True), ("false", False)],
)
def test_header_flags_are_booleans_or_their_names(value, flag):
    assert header_flag(value, "_all_tenants_only") is flag


@pytest.mark.parametrize("value", ["no", "1", 1, [True]])
def test_any_other_header_flag_is_refused_naming_the_header(value):
    with pytest.raises(TenantConfigurationError, match=r"^the _all_tenants_only header must be"):
        header_flag(value, "_all_tenants_only")
