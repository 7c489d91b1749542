"""The ``iot-ingest`` command (the composition layer): ``main`` (parser, ``run``, ``demo``,
``table``, ``config``, ``deadletters``) and ``archive``; ``serve``, ``simulate``,
``verify`` and ``bench`` come from :mod:`queries.cli`, :mod:`simulator.cli` and
:mod:`bench.cli`.
"""

__all__: list[str] = []
