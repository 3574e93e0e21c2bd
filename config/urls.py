from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core import views as core_views

handler404 = "apps.core.exceptions.json_or_html_404"
handler500 = "apps.core.exceptions.json_or_html_500"

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("metrics", core_views.metrics, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("v1/", include("apps.llm.urls")),  # OpenAI-compatible LLM proxy
    path("chat/", include("apps.chat.urls")),
    path("", include("apps.search.urls")),
]
