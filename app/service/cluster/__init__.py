"""The other nodes: this node's identity and an alert's node, the peer inspectors (API server or a
static list) and the service's use of the API server."""
