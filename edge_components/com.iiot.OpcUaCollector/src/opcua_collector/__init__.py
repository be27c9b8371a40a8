"""OPC UA collector: PLC nodes -> catalog readings -> the SensorBuffer's input.

`config` (the validated component configuration), `mapping` (one data change -> one reading or
the reason it is refused), `collector` (sessions, subscriptions, backlog, publisher, health),
`main` (the Greengrass and local entry points).
"""
