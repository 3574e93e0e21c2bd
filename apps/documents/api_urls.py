from rest_framework.routers import SimpleRouter

from apps.documents.api import DocumentViewSet

router = SimpleRouter(trailing_slash=False)
router.register("documents", DocumentViewSet, basename="documents")

urlpatterns = router.urls
