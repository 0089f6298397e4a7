"""pyproject.toml declares what the code imports: runtime imports as dependencies, the rest as extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "banditgate",
    "banditgate_app",
    "router",
    "reward_ingest",
    "trainer",
    "experiments",
    "monitor",
)
OURS = {*PACKAGES, "tests", "bench"}
# Declared but used by name rather than imported: (file that names it, the name).
NAMED = {"uvloop": ("banditgate/process.py", 'loop="uvloop"')}
PLUGINS = {"pytest-asyncio"}  # loaded by pytest (asyncio_mode in pyproject.toml)
# Declared for a package that imports them (tritonclient.http), in place of its extra.
TRANSPORTS = {"geventhttpclient"}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return normal(match.group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {requirement_name(r) for r in requirements} - {"banditgate"}
        for extra, requirements in project["optional-dependencies"].items()
    }
    return runtime, extras


def imports(folder: str) -> tuple[set[str], set[str]]:
    """Third-party top-level modules imported in `folder`: (at module level, inside functions)."""
    module_level: set[str] = set()
    deferred: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OURS or top == "__future__":
                    continue
                (module_level if id(node) in top_level else deferred).add(top)
    return module_level, deferred


# Import names of optional packages that need not be installed here (the bench extra).
NOT_INSTALLED = {"sklearn": ["scikit-learn"]}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    found = {**NOT_INSTALLED, **packages_distributions()}
    return {module: {normal(d) for d in found.get(module, [module])} for module in modules}


def test_runtime_code_imports_only_declared_dependencies() -> None:
    runtime, extras = declared()
    unused = set(runtime)
    for package in PACKAGES:
        module_level, deferred = imports(package)
        for module, dists in distributions(module_level).items():
            assert dists & runtime, f"{package} imports {module} ({dists}): not a dependency"
            unused -= dists
        for module, dists in distributions(deferred).items():
            allowed = runtime | extras["s3"]
            assert dists & allowed, f"{package} imports {module} ({dists}): declared nowhere"
            unused -= dists
    for name, (path, text) in NAMED.items():
        assert text in (ROOT / path).read_text(), f"{name} is no longer used by {path}"
        unused.discard(name)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    runtime, extras = declared()
    allowed = runtime | set().union(*extras.values())
    used: set[str] = set()
    for folder in ("tests", "bench"):
        module_level, deferred = imports(folder)
        for module, dists in distributions(module_level | deferred).items():
            assert dists & allowed, f"{folder} imports {module} ({dists}): declared nowhere"
            used |= dists
    for package in PACKAGES:
        used |= set().union(*distributions(imports(package)[1]).values(), set())
    unused = (extras["test"] | extras["s3"]) - used - PLUGINS - TRANSPORTS
    assert not unused, f"test extras nothing imports: {sorted(unused)}"
