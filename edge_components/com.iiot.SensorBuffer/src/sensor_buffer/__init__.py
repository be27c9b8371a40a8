"""SensorBuffer: the gateway's durable store-and-forward buffer with threshold checks.

Plain Python over the shared core (`iiot`) and the edge runtime (`edge_runtime`: transports,
run loop), tested without Greengrass; no module here imports `awsiot` or `awscrt`.
"""
