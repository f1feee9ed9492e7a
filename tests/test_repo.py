"""Repository contracts: top-level layout, README quickstart ↔ .ci/run, pins. (The notebooks run in
tests/test_notebooks.py.)"""

import glob
import importlib.util
import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def quickstart_commands():
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", read("README.md"), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_quickstart_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "configs/demo.py" in demo
    assert "pytest" in tests
    ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
    assert tests.strip() in ci_lines, "the README's test command must appear verbatim in .ci/run"


def test_readme_test_command_sets_up_the_tpu_environment_before_pytest():
    """tests/test_aot.py skips without .venv-tpu/bin/python: the one test command must create it from
    requirements-tpu.txt before pytest starts, so that it tests everything."""
    tests = quickstart_commands()[1]
    steps = [step.strip() for step in tests.split("&&")]
    pytest_at = next(i for i, step in enumerate(steps) if "pytest" in step)
    assert "python3 -m venv .venv-tpu" in steps[:pytest_at], steps
    assert ".venv-tpu/bin/pip install -q -r requirements-tpu.txt" in steps[:pytest_at], steps
    assert steps.index("python3 -m venv .venv-tpu") < steps.index(
        ".venv-tpu/bin/pip install -q -r requirements-tpu.txt")
    assert steps[pytest_at].startswith(".venv/bin/python -m pytest") and steps[pytest_at].endswith(" tests")


def test_ci_runs_nothing_but_the_readme_test_command():
    """.ci/run: a shebang, comments, ``set -euo pipefail``, the cd to the repository root, and the README's
    test command — no other command (CI must test what a newcomer runs)."""
    commands = [line.strip() for line in read(".ci/run").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', quickstart_commands()[1].strip()], commands


def test_top_level_layout():
    allowed = {"README.md", "requirements.txt", "requirements-test.txt", "requirements-tpu.txt",
               "mathvlm", "configs", "launch", "tests", "notebooks", ".ci", "pyproject.toml",
               ".gitignore", ".git", ".venv", ".venv-tpu", "runs", "docs"}
    present = set(os.listdir(ROOT)) - {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}
    assert present <= allowed, sorted(present - allowed)
    for required in ("README.md", "requirements.txt", "mathvlm", "configs", "launch", "tests", "notebooks", "docs"):
        assert required in present


def test_requirements_are_pinned_and_torch_is_test_only():
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in read(name).splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{name}: {line!r} is not pinned with =="
    runtime = [line.split("#")[0].strip() for line in read("requirements.txt").splitlines()]
    assert not [line for line in runtime if line.startswith(("torch", "tensorflow=", "tensorflow ", "libtpu"))]
    assert "torch==2.13.0" in read("requirements-test.txt").split()


def test_documented_modules_files_and_links_exist():
    """Every ``python -m mathvlm.X`` in README.md and docs/ names an importable module, every repository
    path they mention (mathvlm/, configs/, launch/, tests/, notebooks/, docs/) exists, and every relative
    link resolves — so a moved module or file fails here, not in a newcomer's shell."""
    names = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    assert len(names) > 1, "docs/ holds the reference the README links to"
    missing = []
    for name in names:
        text = read(name)
        for module in sorted(set(re.findall(r"python -m (mathvlm[\w.]*)", text))):
            if importlib.util.find_spec(module) is None:
                missing.append((name, module))
        for path in sorted(set(re.findall(
                r"(?<![\w/.~-])((?:mathvlm|configs|launch|tests|notebooks|docs)/[\w./-]*\w)", text))):
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append((name, path))
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http") and not os.path.exists(os.path.join(ROOT, os.path.dirname(name), link)):
                missing.append((name, link))
    assert not missing, missing

