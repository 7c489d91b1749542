"""The typed items (ingest.storage.items) catch what they are for: mypy rejects a misspelt
attribute, a number given as an ``int``, a required attribute left out, and accepts the
items the project writes and reads.

One mypy run over every snippet (each its own file, so each one's errors are its own),
cached for the module: ≈ 2 s.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

REPO = Path(__file__).resolve().parent.parent

_READING = """{"pk": {"S": "dev-1#2026-11-22#0"}, "sk": {"N": "1"}, "ttl": {"N": "2"},
        "m": {"M": {"t": {"N": "21.5"}}}}"""

SNIPPETS = {
    "accepts_items": f"""
        from ingest.storage.items import (
            Item, JournalItem, KeyedItem, ReadingItem, ReadingProjection, RegistryItem,
        )
        from ingest.storage.dynamo import BatchSink
        from ingest.storage.layout import TableLayout

        item: ReadingItem = {_READING}
        tagged: ReadingItem = {{**item, "g": {{"M": {{"site": {{"S": "north"}}}}}}}}
        projection: ReadingProjection = {{"sk": {{"N": "1"}}, "m": {{"M": {{}}}}}}
        journal: JournalItem = {{
            "pk": {{"S": "#journal#w"}}, "sk": {{"N": "1"}}, "ttl": {{"N": "2"}},
            "n": {{"N": "0"}}, "b": {{"B": b""}},
        }}
        registry: RegistryItem = {{"sid": {{"S": "dev-1"}}}}
        general: Item = item
        keyed: list[KeyedItem] = [item, journal]
        sk: str = item["sk"]["N"]
        TableLayout.from_item(item)
        TableLayout.from_item(projection, "dev-1")
        TableLayout.from_item(TableLayout().to_item(TableLayout.from_item(tagged)))

        async def put(sink: BatchSink, items: list[ReadingItem]) -> list[Item]:
            return await sink.batch_write(items)
    """,
    "rejects_typed_item_as_dict": f"""
        from typing import Any

        from ingest.storage.items import ReadingItem

        item: ReadingItem = {_READING}
        general: dict[str, Any] = item  # why Item is a Mapping
    """,
    "rejects_misspelt_attribute": """
        from ingest.storage.items import ReadingItem

        item: ReadingItem = {
            "pk": {"S": "dev-1#2026-11-22#0"}, "sK": {"N": "1"}, "ttl": {"N": "2"},
            "m": {"M": {}},
        }
    """,
    "rejects_misspelt_read": f"""
        from ingest.storage.items import ReadingItem

        item: ReadingItem = {_READING}
        print(item["sK"])
    """,
    "rejects_int_number": """
        from ingest.storage.items import ReadingItem

        item: ReadingItem = {
            "pk": {"S": "dev-1#2026-11-22#0"}, "sk": {"N": 5}, "ttl": {"N": "2"},
            "m": {"M": {}},
        }
    """,
    "rejects_int_metric": """
        from ingest.storage.items import ReadingItem

        item: ReadingItem = {
            "pk": {"S": "dev-1#2026-11-22#0"}, "sk": {"N": "1"}, "ttl": {"N": "2"},
            "m": {"M": {"t": {"N": 21.5}}},
        }
    """,
    "rejects_missing_key": """
        from ingest.storage.items import ReadingItem

        item: ReadingItem = {"pk": {"S": "dev-1#2026-11-22#0"}, "sk": {"N": "1"}, "m": {"M": {}}}
    """,
    "rejects_missing_part_attribute": """
        from ingest.storage.items import WindowPartItem

        item: WindowPartItem = {
            "pk": {"S": "dev-1#2026-11-22"}, "sk": {"N": "1"}, "ttl": {"N": "2"},
            "n": {"N": "1"}, "t0": {"N": "1"}, "t1": {"N": "1"}, "k": {"N": "1"},
            "w": {"N": "1"}, "b": {"B": b""},
        }
    """,
}

EXPECTED = {
    "rejects_misspelt_attribute": 'Extra key "sK"',
    "rejects_misspelt_read": 'has no key "sK"',
    "rejects_int_number": '(expression has type "int", TypedDict item "N" has type "str")',
    "rejects_int_metric": '(expression has type "float", TypedDict item "N" has type "str")',
    "rejects_missing_key": 'Missing key "ttl"',
    "rejects_missing_part_attribute": 'Missing key "set"',
    "rejects_typed_item_as_dict": '(expression has type "ReadingItem", variable has type '
    '"dict[str, Any]")',
}


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each snippet's mypy error lines (one mypy run for all of them)."""
    root = tmp_path_factory.mktemp("typing")
    for name, code in SNIPPETS.items():
        (root / f"{name}.py").write_text(textwrap.dedent(code))
    config = root / "mypy.ini"
    # The project's modules are checked by the project's own mypy run: here only the
    # snippets' errors count (and the clients' untyped libraries are no concern).
    config.write_text(
        f"[mypy]\nstrict = True\npython_version = 3.11\nmypy_path = {REPO}\n"
        "follow_imports = silent\nignore_missing_imports = True\n"
    )
    out, err, _ = api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(root / "cache"),
            "--no-error-summary",
            "--hide-error-context",
            *(str(root / f"{name}.py") for name in SNIPPETS),
        ]
    )
    assert not err, err
    by_file: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in out.splitlines():
        name = Path(line.split(":", 1)[0]).stem
        if ": error:" in line:
            assert name in by_file, f"an error outside the snippets: {line}"
            by_file[name].append(line)
    return by_file


def test_the_correct_items_type_check(errors: dict[str, list[str]]) -> None:
    assert errors["accepts_items"] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_wrong_item_is_rejected(errors: dict[str, list[str]], name: str) -> None:
    assert errors[name], f"mypy accepted {name}"
    assert any(EXPECTED[name] in line for line in errors[name]), errors[name]
