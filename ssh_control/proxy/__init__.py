"""The browser path to the agents' web services: `/instances/<id>/gateway/...` and
`/instances/<id>/vnc/...` proxied by the web process to the instance's tunnel."""
