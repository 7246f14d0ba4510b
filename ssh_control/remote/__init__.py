"""Remote operations over an instance's one held SSH connection: commands, files, terminal.

The web process never talks SSH. Small requests and answers (a command and its capped
output, a directory listing, mkdir, rename, delete, opening a terminal) travel as Celery
tasks to the instance's owning SSH worker (`ssh_control.dispatch`). Bulk data (file
contents, terminal streams) does not touch the broker: the owner opens a short-lived,
token-authenticated TCP endpoint (`datachannel`) and the web process connects to it.
"""
