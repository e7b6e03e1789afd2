"""The README's examples run, and CI runs the README's test command."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_run(doc):
    for code in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
        exec(compile(code, str(doc.relative_to(ROOT)), "exec"), {})


def test_readme_has_python_examples():
    assert re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"## Set-up on a fresh machine.*?```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    assert len(commands) == 2
    test_command = next(c for c in commands if "test" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()
