"""The package boundaries, checked on every import statement (including those inside
functions) with ``ast``: a change that breaks a rule fails here, naming the file and line.

The rules (docs/architecture.md draws them):
- ``shared`` imports neither end; ``manager`` and ``delegate`` never import each other.
- ``delegate.launcher`` (the root-side task launcher) stays small enough to audit: of the
  delegate, only itself and ``delegate.run.isolation``.
- ``manager.core`` is pure decisions: no I/O library, and of the manager only core, schemas
  and records.
- ``manager.schemas`` is a leaf: of the manager, only schemas.
- ``manager.client`` (the Python client and the ``tether`` command) reaches the server only
  through the wire models: of the manager, only client and schemas.
- The services (access, tasks, secrets, keys, audit) never import the API or the server wiring:
  the API is the one place that maps their errors to HTTP.
- The store may know the records and the core's types, nothing above it.
- The API reaches the store only through the services: no handler reads ``.store``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IO_MODULES = (
    "aiohttp",
    "asyncpg",
    "sqlite3",
    "websockets",
    "socket",
    "subprocess",
    "ssl",
    "boto3",
    "hvac",
)


@dataclass(frozen=True)
class Rule:
    """Modules under ``scope`` may import, of ``guarded`` prefixes, only ``allowed`` ones."""

    name: str
    scope: str
    guarded: tuple[str, ...]
    allowed: tuple[str, ...] = ()


RULES = (
    Rule("shared imports neither end", "shared", ("manager", "delegate")),
    Rule("manager never imports delegate", "manager", ("delegate",)),
    Rule("delegate never imports manager", "delegate", ("manager",)),
    Rule(
        "the task launcher (root) imports of the delegate only itself and isolation",
        "delegate.launcher",
        ("delegate",),
        ("delegate.launcher", "delegate.run.isolation"),
    ),
    Rule(
        "core imports no I/O and nothing above it",
        "manager.core",
        ("manager", *IO_MODULES),
        ("manager.core", "manager.schemas", "manager.records"),
    ),
    Rule("schemas is a leaf", "manager.schemas", ("manager",), ("manager.schemas",)),
    Rule(
        "client imports only schemas and shared",
        "manager.client",
        ("manager",),
        ("manager.client", "manager.schemas"),
    ),
    *(
        Rule(
            f"the {s} service maps no errors to HTTP",
            f"manager.{s}",
            ("manager.api", "manager.server", "manager.client", "manager.cli"),
        )
        for s in ("access", "tasks", "secrets", "keys", "audit")
    ),
    Rule(
        "store knows records and core types only",
        "manager.store",
        ("manager",),
        ("manager.store", "manager.records", "manager.core"),
    ),
)

# Imports a rule would refuse, each with the reason it stands.
EXCEPTIONS = {
    # `tether bench` starts a manager of its own to measure; imported only when that
    # subcommand runs, so the `tether` command itself loads no server code.
    ("manager.client.cli.main", "manager.bench"),
}


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module
    line: int


def imports_of(source: str, module: str, *, is_package: bool = False) -> Iterator[Import]:
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(module, target, node.lineno)
            # `from manager import core` imports manager.core.
            for alias in node.names:
                yield Import(module, f"{target}.{alias.name}", node.lineno)


def violations(imp: Import) -> list[str]:
    out = []
    for rule in RULES:
        if not _matches(imp.module, rule.scope):
            continue
        if not any(_matches(imp.target, g) for g in rule.guarded):
            continue
        if any(_matches(imp.target, a) for a in rule.allowed):
            continue
        if any(_matches(imp.module, m) and _matches(imp.target, t) for m, t in EXCEPTIONS):
            continue
        out.append(f"{imp.module}:{imp.line} imports {imp.target}: {rule.name}")
    return out


def project_imports() -> Iterator[Import]:
    for top in ("manager", "delegate", "shared"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield from imports_of(
                path.read_text(), ".".join(parts), is_package=rel.name == "__init__"
            )


def test_every_import_in_the_project_keeps_the_layers() -> None:
    found = [v for imp in project_imports() for v in violations(imp)]
    assert found == []


def test_the_checker_reads_the_whole_tree() -> None:
    # A checker that saw no files would pass everything.
    modules = {imp.module for imp in project_imports()}
    assert {"manager.core.taskstate", "manager.client.client", "delegate.agent"} <= modules


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("shared.masking", "from manager.records import TaskRecord", "shared imports neither end"),
        ("delegate.agent", "import manager.client", "delegate never imports manager"),
        ("manager.tasks.service", "from delegate.run import executor", "manager never imports"),
        ("manager.core.rbac", "def f():\n    import sqlite3\n", "core imports no I/O"),
        ("manager.schemas.tasks", "from manager.core.rbac import Grants", "schemas is a leaf"),
        ("manager.client.client", "from manager.access import passwords", "client imports only"),
        ("manager.client.cli.tasks", "from ...core import rbac", "client imports only"),
        ("manager.secrets.service", "from manager.api.http import Route", "maps no errors"),
        ("manager.store.sqlite", "from manager.tasks.hub import Hub", "store knows records"),
    ],
)
def test_an_import_that_breaks_a_rule_is_reported(module: str, source: str, rule: str) -> None:
    found = [v for imp in imports_of(source, module) for v in violations(imp)]
    assert any(rule in v for v in found), found


def test_an_allowed_import_is_not_reported() -> None:
    source = "from manager.schemas.grants import AppGrant\nfrom shared.protocol import TaskState"
    assert [v for imp in imports_of(source, "manager.client.client") for v in violations(imp)] == []


# -- the API goes through the services -------------------------------------------------------

# Modules of manager.api that still read the store themselves, each with why. The list only
# shrinks: an entry whose module no longer reads the store fails below.
STORE_READERS = {
    # The guards run before every handler and keep their own caches (keys, allowlist).
    "manager.api.guards": "Access holds the store behind its key and allowlist caches",
    # Writing the chain is the middleware's own job: it alone knows actor and route.
    # Oidc needs the app's Logins, made after the Context: built once there, it could move.
    "manager.api.sso": "oidc_of builds manager.access.sso.Oidc per request over the store",
}


def store_reads(source: str, module: str) -> list[str]:
    """Every read of an attribute named ``store`` (``ctx(request).store``, ``c.store``)."""
    return [
        f"{module}:{node.lineno} reads .store"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]


def api_store_reads() -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / "manager" / "api").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if reads := store_reads(path.read_text(), module):
            found[module] = reads
    return found


def test_the_api_reaches_the_store_only_through_services() -> None:
    found = api_store_reads()
    assert [r for m, reads in found.items() if m not in STORE_READERS for r in reads] == []


def test_the_store_readers_list_has_no_stale_entry() -> None:
    assert sorted(set(STORE_READERS) - set(api_store_reads())) == []


@pytest.mark.parametrize(
    "source",
    ["await ctx(request).store.get_task(i)", "c = ctx(request)\nawait c.store.list_tasks()"],
)
def test_a_store_read_in_a_handler_is_reported(source: str) -> None:
    assert store_reads(source, "manager.api.x") != []


def test_a_service_call_is_not_a_store_read() -> None:
    assert store_reads("await ctx(request).tasks.get(i)", "manager.api.x") == []
