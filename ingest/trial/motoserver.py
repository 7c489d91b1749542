"""moto's server with base-table Queries that read their partition, not the whole table.

Run as ``python -m ingest.trial.motoserver -H HOST -p PORT`` (the arguments of
``python -m moto.server``, which it then runs unchanged). Only the embedded trial
server (:class:`~ingest.trial.servers.EmbeddedDynamo`, behind ``iot-ingest run`` in
trial mode and ``iot-ingest demo``) uses it: production talks to DynamoDB, and the
tests' own moto servers stay plain moto, the third-party implementation they check
the project against.

Why. moto 5.2.5 makes a Query cost what the table holds, and each item it returns
cost about a millisecond:

* ``Table.query`` starts from ``self.all_items()``, which builds and sorts a list of
  *every item in the table*, then keeps the queried partition's; so does a Query on
  the base table, whose partition moto already holds as ``self.items[hash_key]``.
* The response goes through moto's model-driven serializer, which walks every
  attribute of every item through botocore's shapes: ~0.8 ms per small item.

Measured here, a Query of 159 registry items (a sensor-list page's share of one
registry partition) in a table of 12,259 items: plain moto 281 ms (84 ms with
``Limit`` 5); partition only 140 ms; partition and plain-JSON responses 20.5 ms
(4.1 ms). An earlier measurement: a 20-item partition in a 40,000-item table, 630 ms
plain, 21 ms partition only. The demo's sensor list (16 such Queries at 2,000 devices)
went from 9.4 s to about 0.5 s (docs/performance.md, "The demo on the embedded moto").

What changes, two things:

1. While a base-table Query (no ``IndexName``) runs, ``Table.all_items``, asked by that
   Query in that thread for that table, returns only the queried partition (sorted by
   range key, as moto sorts it). Everything else is moto's own code: key conditions,
   order, ``Limit``, ``ExclusiveStartKey``, the 1 MB page, filters, projections,
   ``ScannedCount``. Scans, GSI and LSI Queries, and ``all_items`` called from anywhere
   else are unchanged. The scope is a thread-local (moto's server serves requests on
   concurrent threads; nothing is set on the shared ``Table``), and it names the
   table, so a Query cannot narrow another table's ``all_items``.
2. A Query response whose items hold only S, N, SS, NS, and M or L of those (JSON as
   they stand, which moto's serializer writes unchanged) is written with
   ``json.dumps``; its other members (counts, ``LastEvaluatedKey``, consumed capacity,
   headers) still by moto's serializer. Items with B, BS, BOOL or NULL anywhere (moto
   base64-encodes or rewrites those), every other operation, and
   ``MOTO_PRETTIFY_RESPONSES`` keep moto's serializer for the whole response.

A moto upgrade that moves these internals fails at start, loudly
(:class:`MotoInternalsChanged`, in the server's log and its exit status): :func:`install`
checks ``Table.query``'s signature and that ``DynamoResult`` serializes as
``ActionResult``, then runs a Query on a small table of its own both ways (the same
items, read from the narrowed ``all_items``) and serializes a sample response both
ways (the same JSON).
"""

from __future__ import annotations

import inspect
import json
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
        f"moto {_moto_version()}: {what}; ingest.trial.motoserver's Query patch was written "
        "for moto 5.2 (moto.dynamodb's Table.query, Table.all_items and DynamoResult). "
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


_PLAIN_SCALARS = frozenset(("S", "N"))
_PLAIN_SETS = frozenset(("SS", "NS"))


def _plain_value(value: Any) -> bool:
    """Whether an AttributeValue is JSON as it stands: S, N, SS, NS, and M or L of those.

    moto's serializer writes these unchanged (a test and the self-test hold it to that);
    B and BS it base64-encodes, BOOL and NULL it may rewrite: those stay with it.
    """
    if type(value) is not dict or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind in _PLAIN_SCALARS:
        return type(inner) is str
    if kind in _PLAIN_SETS:
        return type(inner) is list and all(type(v) is str for v in inner)
    if kind == "M":
        return type(inner) is dict and all(
            type(k) is str and _plain_value(v) for k, v in inner.items()
        )
    if kind == "L":
        return type(inner) is list and all(_plain_value(v) for v in inner)
    return False


def _plain_items(items: Any) -> bool:
    return type(items) is list and all(
        type(item) is dict and all(type(k) is str and _plain_value(v) for k, v in item.items())
        for item in items
    )


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

        result_cls, action_result_cls, prettify = _result_classes()
        original_execute = result_cls.execute_result

        def execute_result(self: Any, context: Any) -> Any:
            body = self.result
            if (
                prettify()
                or context.operation_model.name != "Query"
                or type(body) is not dict
                or "Items" not in body
                or not _plain_items(body["Items"])
            ):
                return original_execute(self, context)
            rest = {k: v for k, v in body.items() if k != "Items"}
            status, headers, text = action_result_cls(rest).execute_result(context)
            out = json.loads(text)
            out["Items"] = body["Items"]
            return status, headers, json.dumps(out)

        table_cls.query, table_cls.all_items = query, all_items
        result_cls.execute_result = execute_result
        _originals.update(
            query=original_query, all_items=original_all_items, execute_result=original_execute
        )
        try:
            _self_test(table_cls, original_query)
            _self_test_serializer(result_cls, action_result_cls)
        except BaseException:
            _restore(table_cls)
            raise


def _result_classes() -> tuple[Any, Any, Callable[[], bool]]:
    """moto's DynamoDB result class, its base, and whether moto pretty-prints responses."""
    try:
        from moto import settings
        from moto.core.responses import ActionResult
        from moto.dynamodb.responses import DynamoResult
    except ImportError as exc:
        raise _changed(f"cannot import moto's DynamoResult or ActionResult ({exc})") from exc
    if "execute_result" in vars(DynamoResult) or not callable(
        getattr(ActionResult, "execute_result", None)
    ):
        raise _changed("DynamoResult no longer serializes as ActionResult.execute_result")
    if not hasattr(settings, "PRETTIFY_RESPONSES"):
        raise _changed("moto.settings.PRETTIFY_RESPONSES is missing")
    return DynamoResult, ActionResult, lambda: bool(settings.PRETTIFY_RESPONSES)


def _restore(table_cls: Any) -> None:
    table_cls.query, table_cls.all_items = _originals["query"], _originals["all_items"]
    from moto.dynamodb.responses import DynamoResult

    if "execute_result" in vars(DynamoResult):
        del DynamoResult.execute_result  # back to ActionResult's
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


# Every shape the fast path takes, with the keys and counts moto adds around them.
_SAMPLE_QUERY_RESULT: dict[str, Any] = {
    "Count": 2,
    "ScannedCount": 3,
    "Items": [
        {
            "pk": {"S": "a#1"},
            "sk": {"N": "-1.5e3"},
            "e": {"S": ""},
            "u": {"S": '\u00e9\u6f22"\\\n'},
            "ss": {"SS": ["x", "y"]},
            "ns": {"NS": ["1", "2.5"]},
            "m": {"M": {"k": {"N": "0"}, "n": {"M": {}}, "l": {"L": [{"S": "v"}, {"L": []}]}}},
        },
        {"pk": {"S": "a#1"}, "sk": {"N": "7"}},
    ],
    "LastEvaluatedKey": {"pk": {"S": "a#1"}, "sk": {"N": "7"}},
    "ConsumedCapacity": {"TableName": "t", "CapacityUnits": 1.0, "Table": {"CapacityUnits": 1.0}},
}


def _self_test_serializer(result_cls: Any, action_result_cls: Any) -> None:
    """The fast path's response, parsed, is moto's own serializer's, parsed."""
    try:
        from moto.core.responses import ActionContext
        from moto.core.serialize import get_serializer_class
        from moto.core.utils import get_service_model
        from moto.dynamodb.responses import DynamoHandler

        service = get_service_model("dynamodb")
        context = ActionContext(
            service,
            service.operation_model("Query"),
            get_serializer_class(service.service_name, service.protocol),
            DynamoHandler(),
        )
        sample = json.loads(json.dumps(_SAMPLE_QUERY_RESULT))
        got = result_cls(sample).execute_result(context)
        want = action_result_cls(json.loads(json.dumps(_SAMPLE_QUERY_RESULT))).execute_result(
            context
        )
    except MotoInternalsChanged:
        raise
    except Exception as exc:
        raise _changed(f"the serializer self-test failed ({type(exc).__name__}: {exc})") from exc
    if got[:2] != want[:2] or json.loads(got[2]) != json.loads(want[2]):
        raise _changed(f"a Query response serialized as {got!r}, moto's own as {want!r}")
    if json.loads(got[2]) != _SAMPLE_QUERY_RESULT:
        raise _changed(f"moto serialized the sample Query response as {want!r}")


def main(argv: list[str] | None = None) -> None:
    """Install the patch, then run ``moto.server``'s ``main`` (same arguments)."""
    install()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
