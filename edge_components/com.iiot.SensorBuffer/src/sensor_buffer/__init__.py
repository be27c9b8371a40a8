"""SensorBuffer: the gateway's durable store-and-forward buffer with threshold checks.

Only `transport_ipc` imports `awsiot` and only `transport_mqtt` imports `awscrt`; everything else
is plain Python over the shared core (`iiot`), tested without Greengrass.
"""
