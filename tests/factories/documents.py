import factory
from django.contrib.auth import get_user_model

from apps.documents.models import Document


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"docs-user-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("pw-for-tests-1")


class StaffFactory(UserFactory):
    username = factory.Sequence(lambda n: f"docs-staff-{n}")
    is_staff = True
    is_superuser = True


class DocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Document

    title = factory.Sequence(lambda n: f"Document number {n}")
    slug = factory.Sequence(lambda n: f"document-{n}")
    body = factory.Faker("paragraph", nb_sentences=6)
    status = Document.Status.PUBLISHED
    visibility = Document.Visibility.PUBLIC
    published_at = factory.Faker("date_time_this_year", tzinfo=__import__("datetime").timezone.utc)
