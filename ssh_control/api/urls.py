from django.urls import path
from rest_framework.routers import SimpleRouter

from ssh_control.api import remote_views, views

router = SimpleRouter(trailing_slash="")
router.register("instances", views.InstanceViewSet, basename="instance")

urlpatterns = [
    path("ssh-status", views.FleetStatusView.as_view(), name="ssh-status"),
    path("ssh-metrics", views.FleetMetricsView.as_view(), name="ssh-metrics"),
    *remote_views.remote_urls(),
    *router.urls,
]
