from django.apps import AppConfig


class SshControlConfig(AppConfig):
    name = "ssh_control"
    verbose_name = "SSH control"
