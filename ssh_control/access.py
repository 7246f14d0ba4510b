"""Who may see and do what with an instance: the one place the access rules live.

Admins (staff users) reach everything. Other users reach the instances granted to them:
`view` lets them read status, events, tunnels and use the browser proxies; `operate`
also lets them test, reconnect and run remote operations. An instance they may not see
answers 404 (the queryset hides it); an action above their level answers 403.
"""

from rest_framework.permissions import BasePermission

from ssh_control.choices import GrantLevel
from ssh_control.models import Instance, InstanceGrant

ADMIN = "admin"
LEVEL_RANK = {GrantLevel.VIEW: 1, GrantLevel.OPERATE: 2, ADMIN: 3}


def is_admin(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def visible_instances(user):
    """The instances `user` may see at any level."""
    if is_admin(user):
        return Instance.objects.all()
    if not (user and user.is_authenticated and user.is_active):
        return Instance.objects.none()
    return Instance.objects.filter(grants__user=user).distinct()


def access_level(user, instance: Instance) -> str | None:
    """`admin`, `operate`, `view`, or None when the user may not see the instance."""
    if is_admin(user):
        return ADMIN
    if not (user and user.is_authenticated and user.is_active):
        return None
    grant = InstanceGrant.objects.filter(instance=instance, user=user).only("level").first()
    return grant.level if grant else None


def has_level(user, instance: Instance, required: str) -> bool:
    level = access_level(user, instance)
    return level is not None and LEVEL_RANK[level] >= LEVEL_RANK[required]


class HasInstanceLevel(BasePermission):
    """Checks the level a view's action requires (`view.required_levels[action]`).

    Admin-only actions are refused before the instance is looked up, so users get 403
    rather than learning whether the instance exists.
    """

    def _required(self, view) -> str:
        if view.action is None:
            # No handler for the method: let the view answer 405.
            return GrantLevel.VIEW
        # An action missing from the map is admin-only, so a new route fails closed.
        return view.required_levels.get(view.action, ADMIN)

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        if self._required(view) == ADMIN:
            return is_admin(request.user)
        return True

    def has_object_permission(self, request, view, obj):
        return has_level(request.user, obj, self._required(view))
