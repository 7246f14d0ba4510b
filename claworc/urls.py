from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from audit.admin import AuditedAdminAuthenticationForm
from claworc import auth_api

# Admin logins are audited like the API's (`/api/v1/auth/login`).
admin.site.login_form = AuditedAdminAuthenticationForm

api_patterns = [
    path("auth/login", auth_api.LoginView.as_view(), name="auth-login"),
    path("auth/logout", auth_api.LogoutView.as_view(), name="auth-logout"),
    path("auth/me", auth_api.MeView.as_view(), name="auth-me"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("ssh_control.api.urls")),
    path("", include("audit.api.urls")),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
    path("", include("ssh_control.proxy.urls")),
]
