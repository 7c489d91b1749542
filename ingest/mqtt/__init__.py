"""MQTT on the wire: ``proto`` (pure functions over bytes: encode/decode MQTT 3.1.1 and 5
packets, reason codes; untrusted input raises only ``MqttProtocolError``), ``link`` (the
connection mechanics the service and the simulator's publisher share: CONNECT and its
refusal rules, keepalive, packet ids, framing) and ``client`` (the service's subscriber:
SUBSCRIBE, explicit PUBACK, QoS 2, resends).
"""

__all__: list[str] = []
