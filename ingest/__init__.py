"""iot-ingest: the ingest service (MQTT → DynamoDB, at least once).

Stages, one module each: ``receiver`` (MQTT session) → ``pipeline`` (inbox,
decode) using ``codec`` and ``layout`` → ``batcher`` → ``writer`` (via
``dynamo``) → ``acks``; ``deadletters`` for what is refused; ``registry``
for the per-sensor summary; ``service`` wires them; ``cli`` is the entry.
"""

from ingest.config import Config, load_config
from ingest.errors import ConfigError, IngestError
from ingest.layout import Reading, TableLayout
from ingest.service import IngestService

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "IngestError",
    "IngestService",
    "Reading",
    "TableLayout",
    "__version__",
    "load_config",
]
