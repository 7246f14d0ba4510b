from django.urls import path

from audit.api import views

urlpatterns = [
    path("ssh-audit-logs", views.AuditEntryListView.as_view(), name="audit-log-list"),
    path("ssh-audit-logs/purge", views.AuditPurgeView.as_view(), name="audit-log-purge"),
]
