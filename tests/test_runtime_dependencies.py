"""`make annotate` installs the package without its test extras: everything the pipeline imports at
run time must come from the runtime dependencies alone. The test environment hides a missing one
(torch, a test-only dependency, pulls in jinja2, which transformers needs to render chat templates:
a fresh `make annotate` on an instruct checkpoint failed with an ImportError), so the check walks the
declared requirements rather than what happens to be installed."""

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# Imported by the libraries on the run's path rather than by the pipeline's own code:
# transformers renders chat templates (model/prompts.py's renderer) with jinja2.
NEEDED_BY_LIBRARIES = {"jinja2"}
# Only `make bench` and the tests' helpers import these (the reference implementation).
NOT_AT_RUN_TIME = ("bench", "testing")


def runtime_distributions(name: str = "qwen2-audio-annotate") -> set[str]:
    """The distributions the package's requirements reach without any extra, markers evaluated here."""
    found, todo = set(), [name]
    while todo:
        current = canonicalize_name(todo.pop())
        if current in found:
            continue
        found.add(current)
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def modules_imported_at_run_time() -> set[str]:
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in NOT_AT_RUN_TIME:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "pipeline"} | NEEDED_BY_LIBRARIES


def test_every_module_the_run_imports_comes_from_a_runtime_dependency():
    runtime = runtime_distributions()
    providers = metadata.packages_distributions()
    missing = {module: providers.get(module) for module in modules_imported_at_run_time()
               if not {canonicalize_name(d) for d in providers.get(module, [])} & runtime}
    assert not missing, f"imported at run time but not reached by pyproject.toml's dependencies: {missing}"
