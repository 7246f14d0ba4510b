from django.urls import re_path

from ssh_control.proxy import consumers, views
from ssh_control.proxy.origins import SERVICE_PATTERN

urlpatterns = [re_path(SERVICE_PATTERN, views.service_proxy, name="service-proxy")]
websocket_urlpatterns = [re_path(SERVICE_PATTERN, consumers.ServiceProxyConsumer.as_asgi())]
