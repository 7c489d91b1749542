"""Typed items: the DynamoDB wire format of every item the project writes and reads.

:mod:`ingest.storage.layout` says what the keys and attributes *mean*; this module
says what they *are*, as ``TypedDict`` s that mypy (``--strict``) checks wherever an
item is built as a dict literal or an attribute is read: a misspelt attribute
(``"sK"``), a number given as an ``int`` (``{"N": 5}``: DynamoDB numbers travel as
text) or a required attribute left out are type errors, not a ``ValidationException``
or a ``KeyError`` at run time.

**Zero cost.** A ``TypedDict`` is a plain ``dict`` at run time. Items are built as
dict literals annotated with these types, never by calling the classes, and nothing
here validates anything at run time. The hot path runs the same bytecode as with
``dict[str, Any]``: ``TableLayout.to_item``/``from_item``, ``Batcher.add``, the
writer's ``write``, ``journal_items``, ``part_item`` and the read path's
``PartitionStream.fill`` disassemble to the same instructions before and after.
Measured (``tests/bench/test_micro_ingest.py``, medians of two runs each, before and
after alternating, on a shared 2-core machine): ``reading_to_item_100`` 0.205/0.204 ms
before, 0.209/0.198 ms after; ``pipeline_gateway_100_messages_of_100`` 294/177 ms
before, 279/187 ms after (the noise of the machine, not of the change).

**What is typed, what is not.** Items that come back from DynamoDB arrive as ``Any``
(the clients return ``dict[str, Any]`` responses), so a parser that declares the item
type it expects gets it checked without a cast; parsers of items from the table still
catch ``KeyError``/``TypeError`` where they did, since the table may hold anything.
Code that genuinely handles any item (the clients, BatchWriteItem, the pager, the
writer's retry of unprocessed items, dead letters) takes :data:`Item`.

**Why** :data:`Item` **is** ``Mapping[str, Any]``. A ``TypedDict`` is not assignable to
``dict[str, Any]`` (a ``dict`` could have any key set or deleted), but it is to
``Mapping[str, Any]`` and ``Mapping[str, object]``. ``Any`` values keep the generic
code that reads ``item["pk"]["S"]`` unchanged; ``object`` would force a narrowing
at every such read, with no gain where the shape is unknown anyway. Sequences of
items in generic signatures are ``Sequence[Item]``, not ``list[Item]`` (a list is
invariant: ``list[ReadingItem]`` is not a ``list[Item]``).

**Binary values.** ``{"B": ...}`` is ``bytes`` when written; read back it is
``bytes`` from botocore and base64 text from the lean HTTP client, hence
``bytes | str``, read through :func:`ingest.storage.layout.binary_value`.

**Optional attributes** are ``NotRequired``. Items written by UpdateItem and read
through projections (registry items, late marks) have every attribute optional: no
code builds them whole. A reading read through a projection (no ``pk``, metrics
perhaps absent) is a :class:`ReadingProjection`, which :meth:`TableLayout.from_item
<ingest.storage.layout.TableLayout.from_item>` takes as well as a
:class:`ReadingItem` (a ``TypedDict`` whose key is required is not assignable to
one where it is not: the two are distinct types).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

__all__ = [
    "ArchiveMarkerItem",
    "ArchivePolicyItem",
    "AttributeValue",
    "BinaryValue",
    "BoolValue",
    "CheckpointItem",
    "DayLogItem",
    "Item",
    "ItemKey",
    "JournalItem",
    "KeyedItem",
    "LateMarkItem",
    "LayoutItem",
    "ListValue",
    "MapValue",
    "NullValue",
    "NumberMap",
    "NumberValue",
    "ReadingItem",
    "ReadingProjection",
    "RegistryItem",
    "RollupBinsItem",
    "RollupLogItem",
    "SealLogItem",
    "StageItem",
    "StaleMarkItem",
    "StringMap",
    "StringValue",
    "WindowPartItem",
]

Item: TypeAlias = Mapping[str, Any]
"""Any DynamoDB item in wire format (``{"pk": {"S": ...}, ...}``); see the module docstring."""

# -- attribute values ----------------------------------------------------------


class StringValue(TypedDict):
    """``{"S": text}``."""

    S: str


class NumberValue(TypedDict):
    """``{"N": text}``: DynamoDB numbers are decimal text on the wire, never ``int``."""

    N: str


class BinaryValue(TypedDict):
    """``{"B": bytes}`` (base64 text when read through the lean HTTP client)."""

    B: bytes | str


class BoolValue(TypedDict):
    """``{"BOOL": flag}``."""

    BOOL: bool


class NullValue(TypedDict):
    """``{"NULL": True}``."""

    NULL: Literal[True]


class MapValue(TypedDict):
    """``{"M": {name: value}}``, any values."""

    M: dict[str, AttributeValue]


class ListValue(TypedDict):
    """``{"L": [value, ...]}``."""

    L: list[AttributeValue]


AttributeValue: TypeAlias = (
    StringValue | NumberValue | BinaryValue | BoolValue | NullValue | MapValue | ListValue
)
"""Any attribute value (what expression attribute values hold)."""


class NumberMap(TypedDict):
    """``{"M": {name: {"N": text}}}``: metrics."""

    M: dict[str, NumberValue]


class StringMap(TypedDict):
    """``{"M": {name: {"S": text}}}``: tags."""

    M: dict[str, StringValue]


# -- keys ------------------------------------------------------------------------


class ItemKey(TypedDict):
    """Every item's key: ``pk`` S, ``sk`` N (GetItem, UpdateItem, DeleteItem)."""

    pk: StringValue
    sk: NumberValue


KeyedItem: TypeAlias = ItemKey
"""An item of any kind, as far as the write path's batches need it (reading items,
journal items): its key. Every item type below is assignable to it."""


# -- readings (``reading`` layout) -----------------------------------------------


class ReadingItem(TypedDict):
    """A reading, one item (``reading`` layout; see :mod:`ingest.storage.layout`)."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    m: NumberMap
    g: NotRequired[StringMap]


class ReadingProjection(TypedDict):
    """A reading item as a projection returns it: the key's ``sk`` always, ``pk`` not
    when the query left it out, ``m`` not when none of the asked metrics is there."""

    pk: NotRequired[StringValue]
    sk: NumberValue
    ttl: NotRequired[NumberValue]
    m: NotRequired[NumberMap]
    g: NotRequired[StringMap]


# -- the table's records -----------------------------------------------------------


class LayoutItem(TypedDict):
    """The layout record (``pk="#layout", sk=0``); the packed parameters only on a
    ``packed`` table's."""

    pk: StringValue
    sk: NumberValue
    bucket_ms: NumberValue
    shards: NumberValue
    retention_days: NumberValue
    layout: NotRequired[StringValue]
    window_ms: NotRequired[NumberValue]
    groups: NotRequired[NumberValue]
    stage_ms: NotRequired[NumberValue]


class ArchivePolicyItem(TypedDict):
    """The archive policy record (``pk="#layout", sk=1``)."""

    pk: StringValue
    sk: NumberValue
    hz: NumberValue
    bw: NumberValue
    st: NumberValue
    since: NumberValue


class RegistryItem(TypedDict, total=False):
    """A sensor's registry item. Written by UpdateItem expressions and read through
    projections, never whole: every attribute may be absent from what is read."""

    pk: StringValue
    sk: NumberValue
    sid: StringValue
    ls: NumberValue
    n: NumberValue
    m: NumberMap
    fs: NumberValue


class LateMarkItem(TypedDict, total=False):
    """A late mark (UpdateItem-written, read through projections: all optional)."""

    pk: StringValue
    sk: NumberValue
    sid: StringValue
    b: NumberValue
    t: NumberValue
    n: NumberValue
    ttl: NumberValue


ArchiveMarkerItem = TypedDict(
    "ArchiveMarkerItem",
    {
        "pk": StringValue,
        "sk": NumberValue,
        "n": NumberValue,
        "cs": StringValue,
        "at": NumberValue,
        "bw": NotRequired[NumberValue],
        "key": NotRequired[StringValue],
        "os": NotRequired[StringValue],
        "sz": NotRequired[NumberValue],
        "dx": NotRequired[NumberValue],
        "del": NotRequired[NumberValue],
    },
)
"""An archive marker (:mod:`ingest.storage.archive.manifest`; ``bw`` absent on markers
written before it existed; ``del`` is a keyword, hence the functional form)."""

# -- the ``packed`` layout ---------------------------------------------------------


class JournalItem(TypedDict):
    """A journal item (:mod:`ingest.storage.journal`)."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    n: NumberValue
    b: BinaryValue


CheckpointItem = TypedDict(
    "CheckpointItem",
    {"pk": StringValue, "sk": NumberValue, "from": NumberValue, "ttl": NumberValue},
)
"""A journal's checkpoint (:mod:`ingest.pipeline.packing`): readings received before
``from`` (ms) are sealed."""


class WindowPartItem(TypedDict):
    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    n: NumberValue
    t0: NumberValue
    t1: NumberValue
    set: NumberValue
    k: NumberValue
    w: NumberValue
    b: BinaryValue


"""A part of a sealed window (:mod:`ingest.storage.windows`)."""


class StageItem(TypedDict):
    """A staging item (:mod:`ingest.storage.windows`)."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    n: NumberValue
    b: BinaryValue


class SealLogItem(TypedDict):
    """A seal log or compaction entry (:mod:`ingest.storage.compaction`; ``k`` is
    ``"s"`` or ``"c"``)."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    k: StringValue
    b: BinaryValue


class RollupBinsItem(TypedDict):
    """A rollup item (:mod:`ingest.storage.rollups`): ``h`` and ``v`` on day items only."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    n: NumberValue
    b: BinaryValue
    h: NotRequired[NumberValue]
    v: NotRequired[NumberValue]


class RollupLogItem(TypedDict):
    """A rollup log item (:mod:`ingest.storage.rollpass`)."""

    pk: StringValue
    sk: NumberValue
    ttl: NumberValue
    b: BinaryValue


class StaleMarkItem(TypedDict):
    """An hour whose rollups lack a late seal (``#stale#{sensor}`` / hour start)."""

    pk: StringValue
    sk: NumberValue
    t: NumberValue
    ttl: NumberValue


class DayLogItem(TypedDict):
    """The day log item of one day (:mod:`ingest.storage.rollpass`)."""

    pk: StringValue
    sk: NumberValue
    h: NumberValue
    ttl: NumberValue
