"""Validates request bodies against Klaviyo's published OpenAPI 3.0 spec (``stable.json``).

The spec lives beside the repository, in ``<repo>/../shared/klaviyo/stable.json`` (CI clones
the repo with ``shared/`` beside it); ``ELIDO_KLAVIYO_SPEC`` overrides the path. It is never
copied into the project. When it is missing, validation FAILS with a message saying where it
was looked for: a silent skip would let an invalid payload pass CI.

    from tests.support.klaviyo_spec import validate_event_create, validate_bulk_job
    validate_event_create(body)   # pytest.fail(...) listing every schema violation
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_ENV: Final = "ELIDO_KLAVIYO_SPEC"
_SPEC_URI: Final = "urn:klaviyo:stable.json"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]


class SpecMissingError(RuntimeError):
    """The OpenAPI spec file is not where it should be."""


def spec_path() -> Path:
    """Where the spec is expected: ``$ELIDO_KLAVIYO_SPEC`` or ``<repo>/../shared/...``."""
    override = os.environ.get(SPEC_ENV)
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "klaviyo" / "stable.json"


def load_spec(path: Path | None = None) -> Mapping[str, Any]:
    """The parsed spec; raises :class:`SpecMissingError` with a clear message if absent."""
    return _load(path or spec_path())


@functools.cache
def _load(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise SpecMissingError(
            f"Klaviyo's OpenAPI spec was not found at {path}. Payload validation needs it: "
            f"put the shared/ folder beside the repository (shared/klaviyo/stable.json) or "
            f"set {SPEC_ENV} to the file's path."
        )
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if not str(spec.get("openapi", "")).startswith("3.0"):
        raise SpecMissingError(f"{path} is not an OpenAPI 3.0 document.")
    return spec


def schema_errors(schema_name: str, body: Any, path: Path | None = None) -> list[str]:
    """Every violation of ``components.schemas.<schema_name>`` by ``body`` (empty = valid)."""
    validator = _validator(schema_name, path or spec_path())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    return [_describe(error) for error in errors]


def validate_schema(schema_name: str, body: Any) -> None:
    """Fails the current test unless ``body`` is a valid ``schema_name``."""
    try:
        errors = schema_errors(schema_name, body)
    except SpecMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    if errors:
        pytest.fail(
            f"body is not a valid {schema_name}:\n  "
            + "\n  ".join(errors)
            + f"\nbody: {json.dumps(body)[:2000]}",
            pytrace=False,
        )


def validate_event_create(body: Any) -> None:
    """Fails the current test unless ``body`` is a valid Create Event body."""
    validate_schema("EventCreateQueryV2", body)


def validate_bulk_job(body: Any) -> None:
    """Fails the current test unless ``body`` is a valid Bulk Create Events body."""
    validate_schema("EventsBulkCreateJob", body)


@functools.cache
def _validator(schema_name: str, path: Path) -> OAS30Validator:
    spec = load_spec(path)
    if schema_name not in spec.get("components", {}).get("schemas", {}):
        raise KeyError(f"schema {schema_name!r} is not in the spec")
    # Register the whole document so $refs resolve anywhere inside it, as the spec intends.
    resource = Resource.from_contents(spec, default_specification=DRAFT4)
    registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
    schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}
    return OAS30Validator(schema, registry=registry, format_checker=oas30_format_checker)


def _describe(error: Any) -> str:
    # A jsonschema ValidationError (jsonschema ships no type stubs).
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}"
