"""The smoke tests' InfluxDB probe: counts a test batch's readings from inside the VPC."""
