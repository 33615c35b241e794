"""One SQL text for SQLite and PostgreSQL.

A statement is written once with ``:name`` parameters and ``{NAME}`` fragments. Rendering
puts in the fragment of the dialect (where the two really differ: a type, an operator, a
collation) or a fixed column list, then, for PostgreSQL, numbers the parameters ``$1..$n``
for asyncpg. SQLite binds ``:name`` itself. Renderings are cached: a constant statement is
rendered once per process.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from manager.core.audit_chain import EVENT_FIELDS, SavedAuditFilter
from manager.records import (
    AccessSettings,
    AllowlistEntry,
    ApiKeyRecord,
    AttemptRecord,
    DelegateRecord,
    EntityRecord,
    LogRecord,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
    TokenRecord,
)

__all__ = ["Dialect", "bind", "fields", "fragments", "one_of", "params_of", "render"]


class Dialect(enum.Enum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


# A record type's field names, once: dataclasses.fields builds a new tuple of Field objects
# at each call, which was a few per cent of a saturated manager (one call per insert).
_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def fields(record: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(record)
    if names is None:
        names = _FIELDS[record] = tuple(f.name for f in dataclasses.fields(record))
    return names


def params_of(record: Any) -> dict[str, Any]:
    """A record's fields by name: the parameters of its {X_PARAMS}."""
    return {name: getattr(record, name) for name in fields(type(record))}


def _columns(names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{name}" for name in names)


def _params(names: Sequence[str]) -> str:
    return ", ".join(f":{name}" for name in names)


_SQLITE, _POSTGRES = Dialect.SQLITE, Dialect.POSTGRES

# Where the dialects differ inside one statement or one migration.
_DIFFERENCES: dict[str, dict[Dialect, str]] = {
    # Column types. Times are seconds since the epoch as floats on both.
    "REAL": {_SQLITE: "REAL", _POSTGRES: "DOUBLE PRECISION"},
    "JSON": {_SQLITE: "TEXT", _POSTGRES: "JSONB"},
    "BOOL": {_SQLITE: "INTEGER", _POSTGRES: "BOOLEAN"},
    "FALSE": {_SQLITE: "0", _POSTGRES: "FALSE"},
    "TRUE": {_SQLITE: "1", _POSTGRES: "TRUE"},
    "BIGINT": {_SQLITE: "INTEGER", _POSTGRES: "BIGINT"},
    "BYTES": {_SQLITE: "BLOB", _POSTGRES: "BYTEA"},
    # The audit chain's genesis hash: 64 zeros (manager.core.audit_chain).
    "GENESIS": {_SQLITE: "hex(zeroblob(32))", _POSTGRES: "repeat('0', 64)"},
    # Insertion order, to break ties on created_at (PostgreSQL has no rowid: a column).
    "TOKENS_INSERTED": {_SQLITE: "rowid", _POSTGRES: "seq"},
    "TOKENS_SEQ": {
        _SQLITE: "",
        _POSTGRES: ",\n            -- Insertion order, to break ties on created_at as SQLite's"
        " rowid does.\n            seq BIGINT GENERATED ALWAYS AS IDENTITY",
    },
    "WITHOUT_ROWID": {_SQLITE: " WITHOUT ROWID", _POSTGRES: ""},
    "SERVICE": {
        _SQLITE: "json_extract(deployment, '$.service')",
        _POSTGRES: "deployment->>'service'",
    },
    # LIKE is case-insensitive for ASCII letters in SQLite; PostgreSQL needs ILIKE.
    "ILIKE": {_SQLITE: "LIKE", _POSTGRES: "ILIKE"},
    # Byte order, as SQLite sorts text, whatever the PostgreSQL database's locale.
    "BYTE_ORDER": {_SQLITE: "", _POSTGRES: ' COLLATE "C"'},
    "FOR_UPDATE": {_SQLITE: "", _POSTGRES: " FOR UPDATE"},
    # A log line's size in bytes, its display text and its exact bytes (when it is not text)
    # both, as both are sent (PostgreSQL reads each from the value's header).
    "LOG_BYTES": {
        _SQLITE: "length(CAST(text AS BLOB)) + coalesce(length(data), 0)",
        _POSTGRES: "octet_length(text) + coalesce(octet_length(data), 0)",
    },
    # The unit separator (0x1f), which joins the parts of a scoped idempotency key.
    "UNIT_SEP": {_SQLITE: "char(31)", _POSTGRES: "chr(31)"},
    # Now on the clock leases are counted on: the database's own on PostgreSQL, so that
    # replicas write and judge leases alike whatever their own clocks say; on SQLite (one
    # manager) the store's lease clock, bound as a parameter (manager.store.sqlite).
    "LEASE_NOW": {
        _SQLITE: ":lease_now",
        _POSTGRES: "extract(epoch FROM clock_timestamp())::double precision",
    },
}

_RECORDS: dict[str, type[Any]] = {
    "TASK": TaskRecord,
    "TOKEN": TokenRecord,
    "API_KEY": ApiKeyRecord,
    "ALLOWLIST": AllowlistEntry,
    "ACCESS": AccessSettings,
    "ENTITY": EntityRecord,
    "DELEGATE": DelegateRecord,
    "ATTEMPT": AttemptRecord,
    "LOG": LogRecord,
    "MANAGER": SecretManagerRecord,
    "SECRET": SecretRecord,
    "VERSION": SecretVersionRecord,
    "AUDIT_FILTER": SavedAuditFilter,
}
# Column lists are the records' fields, in order, so that a row maps onto its record;
# {X_COLUMNS} names them, {X_PARAMS} binds a record's fields of the same names.
_SAME: dict[str, str] = {}
for _name, _record in _RECORDS.items():
    _SAME[f"{_name}_COLUMNS"] = _columns(fields(_record))
    _SAME[f"{_name}_PARAMS"] = _params(fields(_record))
_SAME["AUDIT_COLUMNS"] = _columns(EVENT_FIELDS)
_SAME["AUDIT_PARAMS"] = _params(EVENT_FIELDS)
_SAME["V_VERSION_COLUMNS"] = _columns(fields(SecretVersionRecord), "v.")
_SAME["L_LOG_COLUMNS"] = _columns(fields(LogRecord), "l.")
_SAME["A_ATTEMPT_COLUMNS"] = _columns(fields(AttemptRecord), "a.")


def fragments(text: str, dialect: Dialect) -> str:
    """``text`` with each ``{NAME}`` replaced by that fragment (a migration, a statement)."""
    return _FRAGMENT.sub(lambda m: _fragment(m[1], dialect), text)


def _fragment(name: str, dialect: Dialect) -> str:
    same = _SAME.get(name)
    return same if same is not None else _DIFFERENCES[name][dialect]


# Upper-case names only: JSON literals such as '{}' in a migration stay as they are.
_FRAGMENT = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
# Not after a colon or a word: PostgreSQL's ``::type`` casts are not parameters.
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@functools.lru_cache(maxsize=1024)
def render(sql: str, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """The text to run, and for PostgreSQL the parameter names in ``$n`` order (SQLite
    binds by name: empty)."""
    text = fragments(sql, dialect)
    if dialect is Dialect.SQLITE:
        return text, ()
    numbers: dict[str, int] = {}

    def number(m: re.Match[str]) -> str:
        return f"${numbers.setdefault(m[1], len(numbers) + 1)}"

    return _PARAM.sub(number, text), tuple(numbers)


def one_of(
    dialect: Dialect, column: str, name: str, values: Iterable[Any]
) -> tuple[str, dict[str, Any]]:
    """``column`` is one of ``values`` (text), as a condition and its parameters: a bound
    array on PostgreSQL, one parameter a value on SQLite (it has no arrays)."""
    listed = list(values)
    if dialect is Dialect.POSTGRES:
        return f"{column} = ANY(:{name}::text[])", {name: listed}
    params = {f"{name}_{i}": value for i, value in enumerate(listed)}
    return f"{column} IN ({_params(list(params))})", params


def bind(names: Sequence[str], params: Mapping[str, Any]) -> list[Any]:
    return [params[name] for name in names]
