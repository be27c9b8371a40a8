"""The connected platform: one local run where readings flow sensor -> gateway -> cloud -> lake
-> model -> back to the gateways, through faults, reconciled at the end (`runner.run`).

Every part is the real code (gateway components, Lambda handlers, the lake's jobs, the Flink SQL,
the ML pipeline's commands); the AWS services around them are local stand-ins started by the
runner on 127.0.0.1 (local_platform/README.md says what each does not model).
"""
