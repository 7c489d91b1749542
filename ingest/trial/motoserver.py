"""moto's server with base-table Queries that read their partition, not the whole table.

Run as ``python -m ingest.trial.motoserver -H HOST -p PORT`` (the arguments of
``python -m moto.server``, which it then runs unchanged). Only the embedded trial
server (:class:`~ingest.trial.servers.EmbeddedDynamo`, behind ``iot-ingest run`` in
trial mode and ``iot-ingest demo``) uses it: production talks to DynamoDB, and the
tests' own moto servers stay plain moto, the third-party implementation they check
the project against.

Why: moto 5.2.5's ``Table.query`` starts from ``self.all_items()``, which builds and
sorts a list of *every item in the table*, then keeps the ones of the queried
partition; so does a Query on the base table, whose partition moto already holds as
``self.items[hash_key]``. Every Query costs what the whole table holds. Measured here
(one Query of a 20-item partition, table of 40,000 items): 630 ms plain, 21 ms
patched. In the demo the dashboard's sensor list is 16 Queries (8 registry partitions,
two pages each at 2,000 devices) on a table that grows by an item per sensor and window
and a staging item every two seconds: ~1.7 s p50 at 1,000 devices plain, and at 2,000
devices the server spent its time sorting the table (docs/performance.md, "The demo on
the embedded moto", has the before and after figures).

What changes: while a base-table Query (no ``IndexName``) runs, ``Table.all_items``,
asked by that Query in that thread for that table, returns only the queried partition
(sorted by range key, as moto sorts it). Everything else is moto's own code: key
conditions, order, ``Limit``, ``ExclusiveStartKey``, the 1 MB page, filters,
projections, ``ScannedCount``. Scans, GSI and LSI Queries, and ``all_items`` called
from anywhere else are unchanged. The scope is a thread-local (moto's server serves
requests on concurrent threads; nothing is set on the shared ``Table``), and it names
the table, so a Query cannot narrow another table's ``all_items``.

A moto upgrade that moves these internals fails at start, loudly
(:class:`MotoInternalsChanged`): :func:`install` checks ``Table.query``'s signature,
then runs a Query on a small table of its own both ways and requires the same items,
and that the narrowed ``all_items`` was what the Query read.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MotoInternalsChanged", "install", "installed", "main", "uninstall"]

# Table.query's leading parameters, as moto 5.2 has them; the wrapper passes them on as is.
_QUERY_PARAMS = (
    "self",
    "hash_key",
    "range_comparison",
    "range_objs",
    "limit",
    "exclusive_start_key",
    "scan_index_forward",
    "projection_expressions",
    "index_name",
)


class MotoInternalsChanged(RuntimeError):
    """moto's ``Table`` no longer looks as the partition Query patch needs (a moto upgrade)."""


_scope = threading.local()  # .table, .hash_key: the base-table Query running in this thread
_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}


def _moto_version() -> str:
    try:
        import moto

        return str(getattr(moto, "__version__", "unknown"))
    except ImportError:  # pragma: no cover - moto is a dependency
        return "not installed"


def _changed(what: str) -> MotoInternalsChanged:
    return MotoInternalsChanged(
        f"moto {_moto_version()}: {what}; ingest.trial.motoserver's partition Query patch "
        "was written for moto 5.2 (moto.dynamodb.models.table.Table.query and all_items). "
        "Update the patch for this moto, or pin moto to 5.2.x (constraints.txt)."
    )


def _table_class() -> Any:
    try:
        from moto.dynamodb.models.table import Table
    except ImportError as exc:
        raise _changed(f"cannot import moto.dynamodb.models.table.Table ({exc})") from exc
    for name in ("query", "all_items"):
        if not callable(getattr(Table, name, None)):
            raise _changed(f"Table.{name} is missing")
    params = tuple(inspect.signature(Table.query).parameters)
    if params[: len(_QUERY_PARAMS)] != _QUERY_PARAMS:
        raise _changed(f"Table.query's parameters are {params}, not {_QUERY_PARAMS}...")
    return Table


def _narrows(table: object) -> bool:
    """Whether ``table.all_items()`` is asked by a base-table Query on it, in this thread."""
    return getattr(_scope, "table", None) is table


def install() -> None:
    """Patch moto's ``Table`` (idempotent), after checking moto still works the way it needs.

    Raises:
        MotoInternalsChanged: moto's internals are not what the patch relies on.
    """
    with _lock:
        if _originals:
            return
        table_cls = _table_class()
        original_query = table_cls.query
        original_all_items = table_cls.all_items

        def all_items(self: Any) -> list[Any]:
            if not _narrows(self):
                return original_all_items(self)  # type: ignore[no-any-return]
            _scope.narrowed = getattr(_scope, "narrowed", 0) + 1
            partition = self.items.get(_scope.hash_key)  # not [...]: a defaultdict
            if partition is None:
                return []
            if not self.range_key_attr:
                return [partition]
            return sorted(partition.values(), key=lambda item: item.range_key)

        def query(
            self: Any,
            hash_key: Any,
            range_comparison: Any,
            range_objs: Any,
            limit: Any,
            exclusive_start_key: Any,
            scan_index_forward: Any,
            projection_expressions: Any,
            index_name: Any = None,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            call = (
                self,
                hash_key,
                range_comparison,
                range_objs,
                limit,
                exclusive_start_key,
                scan_index_forward,
                projection_expressions,
                index_name,
                *args,
            )
            if index_name or hash_key is None or getattr(_scope, "table", None) is not None:
                return original_query(*call, **kwargs)
            _scope.table, _scope.hash_key = self, hash_key
            try:
                return original_query(*call, **kwargs)
            finally:
                _scope.table = _scope.hash_key = None

        table_cls.query, table_cls.all_items = query, all_items
        _originals.update(query=original_query, all_items=original_all_items)
        try:
            _self_test(table_cls, original_query)
        except BaseException:
            _restore(table_cls)
            raise


def _restore(table_cls: Any) -> None:
    table_cls.query, table_cls.all_items = _originals["query"], _originals["all_items"]
    _originals.clear()


def uninstall() -> None:
    """Restore moto's own ``Table.query`` and ``Table.all_items`` (for tests). Idempotent."""
    with _lock:
        if _originals:
            _restore(_table_class())


def installed() -> bool:
    """Whether the patch is in place."""
    return bool(_originals)


def _self_test(table_cls: Any, original_query: Callable[..., Any]) -> None:
    """A Query on a small table, both ways: the same items, read from the narrowed list."""
    try:
        from moto.dynamodb.models.dynamo_type import DynamoType

        table = table_cls(
            "iot-ingest-motoserver-selftest",
            account_id="123456789012",
            region="us-east-1",
            schema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            attr=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
        )
        for pk in ("a", "b", "c"):
            for sk in (3, 1, 2):
                table.put_item({"pk": {"S": pk}, "sk": {"N": str(sk)}, "v": {"S": pk * sk}})
        args = (DynamoType({"S": "b"}), "GT", [DynamoType({"N": "1"})], 10, None, False, None)
        _scope.narrowed = 0
        got = table.query(*args)
        narrowed = _scope.narrowed
        want = original_query(table, *args)
    except MotoInternalsChanged:
        raise
    except Exception as exc:
        raise _changed(f"the self-test Query failed ({type(exc).__name__}: {exc})") from exc
    if narrowed != 1:
        raise _changed(f"Table.query read all_items {narrowed} times, not once")
    got_json = [i.to_json() for i in got[0]]
    want_json = [i.to_json() for i in want[0]]
    values = [i["Attributes"]["v"]["S"] for i in got_json]
    if got_json != want_json or got[1:] != want[1:] or values != ["bbb", "bb"]:
        raise _changed(f"the self-test Query returned {got_json!r}, moto's own {want_json!r}")


def main(argv: list[str] | None = None) -> None:
    """Install the patch, then run ``moto.server``'s ``main`` (same arguments)."""
    install()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
