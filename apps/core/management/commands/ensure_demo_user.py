import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.core.devservices import DATA_DIR


class Command(BaseCommand):
    help = "Create the demo staff account once; print its password only when created."

    def handle(self, *args, **options):
        User = get_user_model()
        username = settings.DEMO_USERNAME
        credentials_file = DATA_DIR / "demo-credentials.txt"
        if User.objects.filter(is_staff=True).exists():
            hint = f" (see {credentials_file})" if credentials_file.exists() else ""
            self.stdout.write(f"Staff account exists; demo login: {username}{hint}")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text(f"username: {username}\npassword: {password}\n")
        credentials_file.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(
            f"Created demo staff account -> username: {username}  password: {password}\n"
            f"(also saved to {credentials_file})"
        ))
