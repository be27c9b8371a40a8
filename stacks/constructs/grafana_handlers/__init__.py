"""Custom-resource handlers of the Grafana stack (deployed as one Lambda asset)."""
