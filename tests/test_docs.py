"""The README and docs/ stand alone and say what the node does."""

from __future__ import annotations

import re
from pathlib import Path

from websockets.sync.client import connect

from .helpers import NodeThread

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_link_only_to_files_in_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        # The specification lives outside the repository; docs/PROTOCOL.md is the reference.
        assert "../shared" not in text and "SPEC.md" not in text, doc.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            assert (doc.parent / target).resolve().is_file(), (doc.name, target)


def test_readme_says_what_the_optional_parts_need():
    readme = (ROOT / "README.md").read_text()
    example = readme.index("import json, websocket")
    assert "websocket-client" in readme[example - 300:example]
    assert "npm ci --prefix .ci" in readme
    assert "(docs/OPERATIONS.md)" in readme


def test_protocol_doc_ping_examples_are_what_the_node_answers(tmp_path):
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text()
    row = next(line for line in protocol.splitlines() if line.startswith("| `Ping` |"))
    pairs = re.findall(r"`(\{[^`]*\})` gets (?:exactly )?`(\{[^`]*\})`", row)
    assert len(pairs) == 2, row
    n = NodeThread(tmp_path).start()
    try:
        with connect(n.ws_url) as ws:
            for sent, answer in pairs:
                ws.send(sent)
                assert ws.recv(timeout=10) == answer, sent
    finally:
        n.stop()
