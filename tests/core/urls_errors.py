"""Views that raise each kind of error, to test the one envelope end to end."""

from django.urls import include, path
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView


class EchoInput(serializers.Serializer):
    text = serializers.CharField(max_length=5)


class Echo(APIView):
    permission_classes = [permissions.AllowAny]

    def post(self, request):
        data = EchoInput(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(data.validated_data)


class StaffOnly(APIView):
    permission_classes = [permissions.IsAdminUser]

    def get(self, request):
        return Response({"ok": True})


class Boom(APIView):
    permission_classes = [permissions.AllowAny]

    def get(self, request):
        raise RuntimeError("secret internals: password=hunter2")


from config.urls import handler404, handler500  # noqa: E402,F401

urlpatterns = [
    path("api/v1/echo", Echo.as_view()),
    path("api/v1/staff", StaffOnly.as_view()),
    path("api/v1/boom", Boom.as_view()),
    path("", include("config.urls")),
]
