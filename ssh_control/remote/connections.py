"""How a task on the SSH worker reaches an instance's live connection.

The connection manager (`ssh_control.manager`) holds the connections; this is the one
place remote operations ask it for one.
"""

from ssh_control import ssh
from ssh_control.exceptions import NoSSHConnection, SSHManagerUnavailable
from ssh_control.manager.core import current_manager


def live_connection(instance_id: int) -> ssh.Connection:
    """The instance's open connection on this worker; NoSSHConnection when there is none."""
    try:
        manager = current_manager()
    except SSHManagerUnavailable:
        raise NoSSHConnection("this worker runs no connection manager") from None
    try:
        managed = manager.managed(instance_id)
    except SSHManagerUnavailable:
        raise NoSSHConnection(f"instance {instance_id} is not held by this worker") from None
    return managed.live_connection()
