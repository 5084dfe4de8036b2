"""Every `ca-service request` command line in the docs uses options the command has: the
workflow files were once written against guessed option names (--san), and a user copies them
as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ca_service.cli.request import request

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    "README.md",
    "docs/client.md",
    "docs/oidc.md",
    "docs/github-actions.yml",
    "docs/gitlab-ci.yml",
]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def command_lines(text: str) -> list[str]:
    """Each `ca-service request ...` command with its continuation lines (shell backslashes,
    YAML folded lines starting with --)."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if "ca-service request" not in line or "`ca-service request`" in line:
            continue
        parts = [line[line.index("ca-service request") :]]
        j = i
        while j + 1 < len(lines) and (
            lines[j].rstrip().endswith("\\") or lines[j + 1].strip().startswith("--")
        ):
            j += 1
            parts.append(lines[j])
        found.append(" ".join(parts))
    return found


def test_the_docs_hold_request_commands() -> None:
    total = sum(len(command_lines((ROOT / d).read_text())) for d in DOCS)
    assert total >= 8


@pytest.mark.parametrize("doc", DOCS)
def test_request_options_in_the_docs_exist(doc: str) -> None:
    known = {opt for p in request.params for opt in getattr(p, "opts", [])}
    for command in command_lines((ROOT / doc).read_text()):
        used = set(OPTION.findall(command.split("#", 1)[0]))
        assert used <= known, (doc, command, sorted(used - known))
