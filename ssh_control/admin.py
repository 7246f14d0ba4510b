"""The operator UI for instances: state at a glance, and actions that call the services."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.html import format_html

from claworc.admin_mixins import ReadOnlyAdminMixin
from ssh_control import dispatch, services
from ssh_control.choices import ConnectionState, TunnelService
from ssh_control.exceptions import ClaworcError
from ssh_control.models import (
    ConnectionEvent,
    HostKeyPin,
    Instance,
    InstanceGrant,
    InstanceLease,
    KeyRotation,
    Tunnel,
)
from ssh_control.rotation import services as rotation_services
from ssh_control.tunnels import services as tunnel_services
from ssh_control.validators import parse_allowed_ips

STATE_COLOURS = {
    ConnectionState.CONNECTED: "#1a7f37",
    ConnectionState.CONNECTING: "#9a6700",
    ConnectionState.RECONNECTING: "#bc4c00",
    ConnectionState.FAILED: "#cf222e",
    ConnectionState.DISCONNECTED: "#6e7781",
}


class InstanceForm(forms.ModelForm):
    authorized_keys_path = forms.CharField(
        required=False,
        max_length=1024,
        initial="~/.ssh/authorized_keys",
        help_text=Instance._meta.get_field("authorized_keys_path").help_text,
    )

    class Meta:
        model = Instance
        fields = (
            "name",
            "ssh_host",
            "ssh_port",
            "ssh_user",
            "vnc_port",
            "gateway_port",
            "allowed_source_ips",
            "key_rotation_policy_days",
            "authorized_keys_path",
        )
        widgets = {"allowed_source_ips": forms.TextInput(attrs={"size": 80})}

    def clean_authorized_keys_path(self):
        path = self.cleaned_data["authorized_keys_path"]
        try:
            return rotation_services.authorized_keys_path_clean(path) if path else path
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages[0]) from None

    def clean_allowed_source_ips(self):
        try:
            return parse_allowed_ips(self.cleaned_data["allowed_source_ips"])
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages[0]) from None


class KeyInstallForm(forms.Form):
    """The one-time password for installing instances' keys; it is never stored."""

    password = forms.CharField(widget=forms.PasswordInput, strip=False, max_length=1024)


class InstanceGrantInline(admin.TabularInline):
    model = InstanceGrant
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    form = InstanceForm
    inlines = (InstanceGrantInline,)
    list_display = (
        "name",
        "ssh_endpoint",
        "state_badge",
        "healthy",
        "last_health_check",
        "tunnel_summary",
        "ssh_key_fingerprint",
    )
    list_filter = ("connection__state", "connection__is_healthy")
    search_fields = ("name", "ssh_host", "ssh_key_fingerprint")
    readonly_fields = (
        "web_services",
        "authorized_keys_line",
        "ssh_key_fingerprint",
        "ssh_key_created_at",
        "state_badge",
        "host_key",
        "created_at",
        "updated_at",
    )
    actions = ("test_connection", "reconnect", "rotate_key", "install_key", "accept_host_key")

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("connection", "host_key_pin")
        return queryset.prefetch_related("tunnels")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return ("name", *fields) if obj else fields

    @admin.display(description="SSH endpoint")
    def ssh_endpoint(self, obj):
        return f"{obj.ssh_user}@{obj.ssh_host}:{obj.ssh_port}"

    @admin.display(description="state", ordering="connection__state")
    def state_badge(self, obj):
        connection = getattr(obj, "connection", None)
        state = connection.state if connection else ConnectionState.DISCONNECTED
        return format_html(
            '<strong style="color: {}">{}</strong>', STATE_COLOURS.get(state, "#000"), state
        )

    @admin.display(description="healthy", boolean=True)
    def healthy(self, obj):
        connection = getattr(obj, "connection", None)
        return bool(connection and connection.is_healthy)

    @admin.display(description="last check", ordering="connection__last_health_check_at")
    def last_health_check(self, obj):
        connection = getattr(obj, "connection", None)
        return connection.last_health_check_at if connection else None

    @admin.display(description="tunnels")
    def tunnel_summary(self, obj):
        tunnels = list(obj.tunnels.all())
        if not tunnels:
            return "-"
        return ", ".join(f"{tunnel.name or tunnel.service}: {tunnel.status}" for tunnel in tunnels)

    @admin.display(description="web services")
    def web_services(self, obj):
        if obj.pk is None:
            return "-"
        return format_html(
            '<a href="/instances/{}/gateway/" target="_blank">Gateway UI</a> &middot; '
            '<a href="/instances/{}/vnc/" target="_blank">noVNC desktop</a>',
            obj.pk,
            obj.pk,
        )

    @admin.display(description="authorized_keys line")
    def authorized_keys_line(self, obj):
        if not obj.ssh_public_key:
            return "-"
        return format_html('<code style="word-break: break-all">{}</code>', obj.ssh_public_key)

    @admin.display(description="pinned host key")
    def host_key(self, obj):
        pin = getattr(obj, "host_key_pin", None)
        if pin is None:
            return "not pinned yet"
        refused = f"; refused: {pin.offered_fingerprint}" if pin.offered_fingerprint else ""
        return f"{pin.key_type} {pin.fingerprint} ({pin.source}){refused}"

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in services.INSTANCE_FIELDS}
        if not change:
            created = services.instance_create(obj.name, actor=request.user, **fields)
            obj.pk = created.pk
            obj.ssh_public_key = created.ssh_public_key
            obj.ssh_key_fingerprint = created.ssh_key_fingerprint
            obj.ssh_key_created_at = created.ssh_key_created_at
            obj._state.adding = False
        else:
            stored = Instance.objects.get(pk=obj.pk)
            services.instance_update(stored, actor=request.user, **fields)
        stored = Instance.objects.get(pk=obj.pk)
        services.instance_set_allowed_ips(
            stored, allowed_ips=form.cleaned_data["allowed_source_ips"], actor=request.user
        )
        if form.cleaned_data.get("authorized_keys_path"):
            rotation_services.instance_set_authorized_keys_path(
                stored, path=form.cleaned_data["authorized_keys_path"], actor=request.user
            )

    def save_formset(self, request, form, formset, change):
        if formset.model is not InstanceGrant:
            super().save_formset(request, form, formset, change)
            return

        # The admin's change history reads what the formset would save; nothing is written.
        formset.save(commit=False)
        if not formset.has_changed():
            return
        # The service replaces the grants and audits the change, as for the API.
        grants = [
            {"user": grant.cleaned_data["user"], "level": grant.cleaned_data["level"]}
            for grant in formset.forms
            if grant.cleaned_data and grant not in formset.deleted_forms
        ]
        stored = Instance.objects.get(pk=formset.instance.pk)
        services.instance_update(stored, actor=request.user, grants=grants)

    def delete_model(self, request, obj):
        services.instance_delete(obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for instance in queryset:
            services.instance_delete(instance, actor=request.user)

    def _dispatch_each(self, request, queryset, task_name: str, verb: str, **kwargs):
        for instance in queryset:
            try:
                result = dispatch.run_on_owner(instance, task_name, **kwargs)
            except ClaworcError as exc:
                self.message_user(request, f"{instance.name}: {exc.message}", messages.ERROR)
                continue
            message = result.get("message", verb) if isinstance(result, dict) else verb
            self.message_user(request, f"{instance.name}: {message}", messages.SUCCESS)

    @admin.action(description="Test SSH connection")
    def test_connection(self, request, queryset):
        self._dispatch_each(request, queryset, dispatch.TEST_CONNECTION, "tested")

    @admin.action(description="Force reconnection")
    def reconnect(self, request, queryset):
        self._dispatch_each(request, queryset, dispatch.RECONNECT, "reconnected")

    @admin.action(description="Rotate SSH key")
    def rotate_key(self, request, queryset):
        self._dispatch_each(
            request, queryset, dispatch.ROTATE_KEY, "rotated", actor=request.user.get_username()
        )

    @admin.action(description="Install SSH key with a one-time password login")
    def install_key(self, request, queryset):
        form = KeyInstallForm(request.POST if "install_key_submit" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Install SSH key",
                "form": form,
                "instances": queryset,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/ssh_control/install_ssh_key.html", context)
        for instance in queryset:
            try:
                result = rotation_services.key_install(
                    instance, password=form.cleaned_data["password"], actor=request.user
                )
            except ClaworcError as exc:
                self.message_user(request, f"{instance.name}: {exc.message}", messages.ERROR)
                continue
            self.message_user(request, f"{instance.name}: {result['message']}", messages.SUCCESS)
        return None

    @admin.action(description="Accept the host key the agent presented (after a mismatch)")
    def accept_host_key(self, request, queryset):
        accepted = []
        for instance in queryset.select_related("host_key_pin"):
            pin = getattr(instance, "host_key_pin", None)
            if pin is None or not pin.offered_fingerprint:
                self.message_user(
                    request, f"{instance.name}: no refused host key to accept", messages.WARNING
                )
                continue
            offered = pin.offered_fingerprint
            services.host_key_accept(instance, fingerprint=offered, actor=request.user)
            self.message_user(request, f"{instance.name}: host key {offered} accepted")
            accepted.append(instance.pk)
        self._dispatch_each(
            request,
            queryset.filter(pk__in=accepted),
            dispatch.RECONNECT,
            "reconnected",
            actor=request.user.get_username(),
        )


@admin.register(ConnectionEvent)
class ConnectionEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "instance", "event_type", "from_state", "to_state", "reason")
    list_filter = ("event_type", "to_state", "created_at")
    search_fields = ("instance__name", "reason")
    list_select_related = ("instance",)
    date_hierarchy = "created_at"


class CustomTunnelForm(forms.ModelForm):
    """Adds a `custom` tunnel; the service itself is fixed, standard ones follow the ports."""

    name = forms.RegexField(
        regex=tunnel_services.CUSTOM_TUNNEL_NAME_PATTERN,
        max_length=63,
        help_text="Lowercase letters, digits, '-' and '_'.",
    )

    class Meta:
        model = Tunnel
        fields = ("instance", "name", "remote_port")

    def clean(self):
        cleaned = super().clean()
        instance, name = cleaned.get("instance"), cleaned.get("name")
        if (
            instance
            and name
            and instance.tunnels.filter(service=TunnelService.CUSTOM, name=name).exists()
        ):
            self.add_error("name", f"a custom tunnel named {name!r} already exists")
        return cleaned


@admin.register(Tunnel)
class TunnelAdmin(admin.ModelAdmin):
    """Rows are kept by the tunnel supervisor; only `custom` tunnels are added or deleted."""

    list_display = (
        "instance",
        "service",
        "name",
        "local_port",
        "remote_port",
        "status",
        "last_check_at",
        "bytes_transferred",
        "refused_count",
    )
    list_filter = ("service", "status")
    search_fields = ("instance__name", "name")
    list_select_related = ("instance",)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = CustomTunnelForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return CustomTunnelForm._meta.fields
        return super().get_fields(request, obj)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.service != TunnelService.CUSTOM:
            return False
        return super().has_delete_permission(request, obj)

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except ValidationError as exc:
            # The form checked the name, but another admin took it before the save; the
            # add was rolled back with the view's transaction.
            self.message_user(request, "; ".join(exc.messages), level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        # Through the service, so the admin's additions are audited like the API's.
        created = tunnel_services.tunnel_create_custom(
            form.cleaned_data["instance"],
            name=form.cleaned_data["name"],
            remote_port=form.cleaned_data["remote_port"],
            actor=request.user,
        )
        obj.pk, obj.service = created.pk, created.service
        obj._state.adding = False

    def delete_model(self, request, obj):
        tunnel_services.tunnel_delete(obj.instance, obj.pk, actor=request.user)

    def delete_queryset(self, request, queryset):
        # The bulk action has checked `has_delete_permission` for every selected row.
        for tunnel in queryset.select_related("instance"):
            tunnel_services.tunnel_delete(tunnel.instance, tunnel.pk, actor=request.user)


@admin.register(HostKeyPin)
class HostKeyPinAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("instance", "key_type", "fingerprint", "source", "pinned_by", "pinned_at")
    search_fields = ("instance__name", "fingerprint")
    list_select_related = ("instance",)


@admin.register(InstanceLease)
class InstanceLeaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("instance", "node", "acquired_at", "expires_at")
    search_fields = ("instance__name", "node")
    list_select_related = ("instance",)


@admin.register(KeyRotation)
class KeyRotationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("started_at", "instance", "status", "step", "actor", "new_fingerprint")
    list_filter = ("status", "step")
    search_fields = ("instance__name", "old_fingerprint", "new_fingerprint", "actor")
    list_select_related = ("instance",)


# Remote operations (#7): the web terminal page and the terminal recordings' replay.
from ssh_control.remote.admin_views import RemoteOperationsAdminMixin  # noqa: E402

admin.site.unregister(Instance)
admin.site.register(
    Instance, type("InstanceAdmin", (RemoteOperationsAdminMixin, InstanceAdmin), {})
)
