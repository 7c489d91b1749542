"""The embedded servers of trial mode (``iot-ingest demo``, ``iot-ingest run`` with no broker
or DynamoDB configured): a broker (Mosquitto if installed, else amqtt) and moto."""

__all__: list[str] = []
