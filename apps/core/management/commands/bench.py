import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import autodiscover_modules

from apps.core.bench import REGISTRY, machine_info


class Command(BaseCommand):
    help = "Run a named benchmark; the last line of output is one JSON object."

    def create_parser(self, prog_name, subcommand, **kwargs):
        autodiscover_modules("benchmarks")
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        subparsers = parser.add_subparsers(dest="name", metavar="name")
        for name, bench in sorted(REGISTRY.items()):
            sub = subparsers.add_parser(name, help=bench.help)
            if bench.arguments:
                bench.arguments(sub)

    def handle(self, *args, **options):
        name = options.get("name")
        if not name:
            names = ", ".join(sorted(REGISTRY)) or "(none registered)"
            raise CommandError(f"Name a benchmark: {names}")
        bench = REGISTRY[name]
        self.stdout.write(f"bench {name}: {bench.help}")
        figures = bench.func(stdout=self.stdout, options=options)
        result = {"benchmark": name, **figures, "machine": machine_info()}
        self.stdout.write(json.dumps(result, default=str))
        sys.stdout.flush()
