from django.urls import re_path

from ssh_control.proxy import consumers, views

SERVICE_PATTERN = r"^instances/(?P<instance_id>[0-9]{1,18})/(?P<service>vnc|gateway)/(?P<path>.*)$"

urlpatterns = [re_path(SERVICE_PATTERN, views.service_proxy, name="service-proxy")]
websocket_urlpatterns = [re_path(SERVICE_PATTERN, consumers.ServiceProxyConsumer.as_asgi())]
