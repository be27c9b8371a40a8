"""The compact-batch decoder for Flink (Java format `iiot-batch`) and its build."""
