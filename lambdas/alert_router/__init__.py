"""Alert router: anomalies -> repeat suppression -> readable SNS alerts, escalation."""
