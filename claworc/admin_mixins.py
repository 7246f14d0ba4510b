"""Admin building blocks shared by the apps."""


class ReadOnlyAdminMixin:
    """Rows are written by the control plane itself; the admin only shows them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
