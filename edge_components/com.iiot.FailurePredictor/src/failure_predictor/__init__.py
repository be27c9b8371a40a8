"""com.iiot.FailurePredictor: per-machine features, compiled model, alerts on the gateway."""
