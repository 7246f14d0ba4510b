"""The rotation record's status and the runbook's eight steps, in the order they run."""

from django.db import models


class RotationStatus(models.TextChoices):
    IN_PROGRESS = "in_progress", "in progress"
    COMPLETED = "completed", "completed"
    ROLLED_BACK = "rolled_back", "rolled back"


class RotationStep(models.TextChoices):
    GENERATE_KEY = "generate_key", "1 generate the new key pair"
    APPEND_KEY = "append_key", "2 append the new public key to authorized_keys"
    TEST_KEY = "test_key", "3 test a connection with the new key"
    SWITCH_DATABASE = "switch_database", "4 switch the database to the new key"
    REMOVE_OLD_KEY = "remove_old_key", "5 remove the old public key from authorized_keys"
    DELETE_OLD_FILE = "delete_old_file", "6 delete the old private key file"
    RECONNECT = "reconnect", "7 move the connection to the new key"
    RESTART_TUNNELS = "restart_tunnels", "8 restart the tunnels on the new connection"


STEP_ORDER = list(RotationStep.values)
# Steps before the database switch are rolled back after a failure; later ones go forward.
PRE_SWITCH_STEPS = (RotationStep.GENERATE_KEY, RotationStep.APPEND_KEY, RotationStep.TEST_KEY)
