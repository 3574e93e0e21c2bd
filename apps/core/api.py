from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView


class MeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    is_staff = serializers.BooleanField()


class MeView(APIView):
    """Who the caller is authenticated as (session or token)."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses=MeOutputSerializer, tags=["account"])
    def get(self, request):
        return Response(MeOutputSerializer(request.user).data)
