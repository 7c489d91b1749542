"""MQTT on the wire: ``proto`` (pure functions over bytes: encode/decode MQTT 3.1.1 and 5
packets, reason codes; untrusted input raises only ``MqttProtocolError``) and ``client``
(the service's asyncio connection: CONNECT, SUBSCRIBE, explicit PUBACK, keepalive). The
simulator's publisher builds on the same code.
"""

__all__: list[str] = []
