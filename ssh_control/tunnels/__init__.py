"""Tunnels: local listeners on the SSH worker whose connections ride `direct-tcpip`
channels over the instance's one SSH connection (`forwarder`), kept alive, probed and
published to the database by the `supervisor`."""
