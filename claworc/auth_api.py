"""Log in, log out and who-am-I for API clients, on the `session` cookie."""

from django.contrib.auth import authenticate, login, logout
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.choices import AuditEventType
from audit.services import audit_record
from claworc.authentication import is_cross_origin

INVALID_CREDENTIALS = "invalid username or password"


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class UserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    is_admin = serializers.BooleanField()


def user_view(user) -> dict:
    return {"id": user.pk, "username": user.get_username(), "is_admin": user.is_staff}


class LoginView(APIView):
    """Check the credentials and start a session (cookie `session`)."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(request=LoginSerializer, responses=UserSerializer)
    def post(self, request):
        # Without a session there is no CSRF check, so refuse cross-site logins here.
        if is_cross_origin(request):
            raise PermissionDenied("CSRF Failed: cross-origin request refused")
        body = LoginSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        username = body.validated_data["username"]
        user = authenticate(
            request._request, username=username, password=body.validated_data["password"]
        )
        if user is None:
            audit_record(AuditEventType.LOGIN_FAILED, actor=username, details="login refused")
            return Response(
                {"error": INVALID_CREDENTIALS, "code": "invalid_credentials"},
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Session realm="api"'},
            )

        login(request._request, user)
        audit_record(AuditEventType.LOGIN, actor=user, details="logged in through the API")
        return Response(user_view(user))


class LogoutView(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(responses=UserSerializer)
    def get(self, request):
        return Response(user_view(request.user))
