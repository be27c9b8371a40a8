"""What operators and owners see: the fleet report of a run (`write_report`), the cost model
(`cost`), the downtime what-if (`whatif`) and the Grafana dashboards as code (`grafana`)."""
