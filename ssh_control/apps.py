from django.apps import AppConfig


class SshControlConfig(AppConfig):
    name = "ssh_control"
    verbose_name = "SSH control"

    def ready(self):
        from ssh_control import checks  # noqa: F401  (registers the deployment checks)
