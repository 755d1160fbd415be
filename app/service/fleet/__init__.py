"""The fleet wing: which workload faults on which nodes. `view` gathers every node's rows (this
store's, and Prometheus's or a sample of peers') and makes the "also on N other nodes" line; `page`
draws the fleet page from what it gathered; `dashboard` draws the fleet's Grafana dashboard. The
grouping itself is pure, in app.investigation.fleet."""
