"""The SSH worker's connection manager: one healed, verified connection per owned instance.

Later features reach a live connection on the owner with
`current_manager().managed(instance_id).live_connection()`, which returns an
`ssh_control.ssh.Connection` (`run`, `open_direct_tcpip`, `keepalive`).
"""
