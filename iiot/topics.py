"""MQTT topic names shared by the simulator, the gateway components and the cloud rules.

Local topics live on the gateway's broker (Greengrass IPC or mosquitto in local runs); cloud
topics go to AWS IoT Core. Names of the source case study are kept where it gave them.
"""

from __future__ import annotations

# Local (gateway) topics
READINGS = "factory/{factory_id}/readings"  # sensors -> SensorBuffer: JSON or compact batches
LOCAL_ALERTS = "factory/local/alerts"  # threshold alerts for people and PLCs on site

# Cloud (IoT Core) topics
SENSOR_DATA = "factory/sensor/data"  # compact batch uploads
ANOMALIES = "factory/anomalies"  # threshold breaches, sent ahead of any backlog


def readings_topic(factory_id: str) -> str:
    return READINGS.format(factory_id=factory_id)
