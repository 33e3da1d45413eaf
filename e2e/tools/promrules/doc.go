// Package promrules checks the monitoring nftproxy ships
// (manifests/monitoring): the alert rules parse as Prometheus parses
// them, every query of the rules and of the Grafana dashboard parses as
// PromQL, and the metrics they query are written to
// manifests/monitoring/testdata/queried-metrics.txt, which the real-node
// test checks against what running daemons export. A module of its own:
// Prometheus' module would move the versions the Kubernetes tools of
// e2e/tools build with.
package promrules
