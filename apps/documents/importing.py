"""Bulk import of documents, idempotent by (source, external id).

Readers turn a path into ``ImportRecord`` objects, one per line or file, each
carrying its line number. :func:`import_records` validates every record on its
own (a bad record is reported and skipped whole: nothing of it is written),
then writes good records in batches — one transaction per batch, bulk inserts
for new documents, bulk updates for changed ones, nothing for unchanged ones —
and returns the ids whose embedding must be (re)queued.

Re-running an import is safe and resumes an interrupted one: existing unchanged
documents are skipped, and any of them not yet embedded is queued again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.core import parsers
from apps.documents.models import Document

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt")


@dataclass
class ImportRecord:
    line: int                 # line number in the file (1-based), or file index in a folder
    location: str             # "corpus.jsonl:12" or "docs/search.md"
    external_id: str = ""
    title: str = ""
    body: str = ""
    tags: list[str] = field(default_factory=list)
    slug: str = ""
    error: str = ""           # set by the reader when the line itself is unreadable


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)
    to_embed: list[int] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.created + self.updated


# --- readers ------------------------------------------------------------------------------
def read_path(path: Path) -> Iterator[ImportRecord]:
    """Records from a BEIR ``corpus.jsonl``, a generic JSONL, or a folder of .md/.txt."""
    if path.is_dir():
        yield from read_folder(path)
    elif path.is_file():
        yield from read_jsonl(path)
    else:
        raise FileNotFoundError(f"{path} does not exist")


def count_records(path: Path) -> int:
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def read_jsonl(path: Path) -> Iterator[ImportRecord]:
    with path.open(encoding="utf-8", errors="strict") as fh:
        line_no = 0
        while True:
            line_no += 1
            try:
                raw = fh.readline()
            except UnicodeDecodeError as exc:
                yield ImportRecord(line_no, f"{path.name}:{line_no}", error=f"not UTF-8: {exc.reason}")
                continue
            if raw == "":
                return
            if raw.strip():
                yield parse_json_line(raw, line_no, f"{path.name}:{line_no}")


def parse_json_line(raw: str, line_no: int, location: str) -> ImportRecord:
    record = ImportRecord(line_no, location)
    try:
        data = parsers.loads(raw)
    except json.JSONDecodeError as exc:
        record.error = f"invalid JSON: {exc.msg} (column {exc.colno})"
        return record
    except ValueError as exc:  # nested too deeply, a number of more than 4300 digits
        record.error = f"invalid JSON: {exc}"
        return record
    if not isinstance(data, dict):
        record.error = "expected a JSON object"
        return record
    if "_id" in data:  # BEIR corpus: _id, title, text
        record.external_id = str(data["_id"])
        record.title = str(data.get("title") or "").strip() or f"Document {data['_id']}"
        body = data.get("text")
    else:              # generic: title, body, optional tags, slug, id/external_id
        record.title = str(data.get("title") or "").strip()
        body = data.get("body")
        record.slug = str(data.get("slug") or "").strip()
        record.external_id = str(data.get("external_id") or data.get("id") or record.slug or slugify(record.title))
        tags = data.get("tags", [])
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            record.error = "tags must be a list of strings"
            return record
        record.tags = tags
    if body is None:
        record.error = "missing 'text'" if "_id" in data else "missing 'body'"
    elif not isinstance(body, str):
        record.error = "body/text must be a string"
    else:
        record.body = body
    if not record.title and not record.error:
        record.error = "missing 'title'"
    return record


def read_folder(folder: Path) -> Iterator[ImportRecord]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
    for index, file in enumerate(files, start=1):
        relative = file.relative_to(folder).as_posix()
        record = ImportRecord(index, relative, external_id=relative)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            record.error = f"unreadable: {exc}"
            yield record
            continue
        meta, text = split_front_matter(text)
        record.title = meta.get("title") or first_heading(text) or file.stem.replace("-", " ").replace("_", " ")
        record.body = drop_title_heading(text, record.title).strip("\n")
        record.slug = meta.get("slug") or slugify(file.stem)
        record.tags = [t.strip() for t in meta.get("tags", "").split(",") if t.strip()]
        yield record


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """``---\\nkey: value\\n---`` at the top of a Markdown file → (meta, rest)."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end == -1:
        return {}, text
    meta = {}
    for line in text[4:end].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip().lower()] = value.strip()
    return meta, text[end + 4:].lstrip("\n")


def drop_title_heading(text: str, title: str) -> str:
    """Remove a leading ``# <title>`` line: the title is stored (and prefixed to chunks) already."""
    stripped = text.lstrip("\n")
    first, _, rest = stripped.partition("\n")
    return rest if first.strip() == f"# {title}".strip() else text


def first_heading(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


# --- writing --------------------------------------------------------------------------------
def auto_slug(source: str, external_id: str, title: str) -> str:
    digest = hashlib.sha1(f"{source}\x00{external_id}".encode()).hexdigest()[:8]  # noqa: S324 - not security
    return f"{(slugify(title)[:200] or 'document')}-{digest}"


def validate_record(record: ImportRecord, *, source: str, visibility: str) -> Document:
    """A validated, unsaved Document for the record, or ``ValidationError``."""
    if record.error:
        raise ValidationError(record.error)
    for name, value in (("title", record.title), ("body", record.body), ("id", record.external_id),
                        ("slug", record.slug), *(("tags", tag) for tag in record.tags)):
        # PostgreSQL text cannot store either: the whole import would stop at this line
        if "\x00" in value:
            raise ValidationError(f"{name} contains a NUL character (\\u0000)")
        if (surrogate := parsers.lone_surrogate(value)) is not None:
            raise ValidationError(f"{name} contains a lone surrogate (U+{ord(surrogate):04X})")
    document = Document(
        title=record.title, body=record.body, tags=record.tags, source=source,
        external_id=record.external_id, visibility=visibility,
        slug=record.slug or auto_slug(source, record.external_id, record.title),
    )
    if len(record.external_id) > Document._meta.get_field("external_id").max_length:
        raise ValidationError("external id longer than 200 characters")
    document.clean_fields(exclude={"author", "published_at", "content_hash", "summary"})
    return document


def _format_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


def import_records(
    records: Iterable[ImportRecord], *, source: str, visibility: str = Document.Visibility.PUBLIC,
    publish: bool = False, batch_size: int = 500, on_progress: Callable[[int], None] | None = None,
    on_batch_committed: Callable[[list[int]], None] | None = None,
) -> ImportReport:
    """Validate and write records in batches; see the module docstring."""
    report = ImportReport()
    batch: list[tuple[ImportRecord, Document]] = []

    def flush():
        try:
            ids = _write_batch(batch, source=source, publish=publish, report=report)
        except IntegrityError:
            # A conflict the validation could not see (e.g. a concurrent import took a
            # slug): redo the batch one record per transaction and report the culprits.
            ids = []
            for record, document in batch:
                try:
                    ids += _write_batch([(record, document)], source=source, publish=publish, report=report)
                except IntegrityError as exc:
                    report.errors.append(f"{record.location}: {str(exc).splitlines()[0]}")
        if on_batch_committed and ids:
            on_batch_committed(ids)
        batch.clear()

    for record in records:
        try:
            batch.append((record, validate_record(record, source=source, visibility=visibility)))
        except ValidationError as exc:
            report.errors.append(f"{record.location}: {_format_error(exc)}")
        if on_progress:
            on_progress(1)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return report


def _write_batch(batch, *, source: str, publish: bool, report: ImportReport) -> list[int]:
    # Later lines with the same external id win, like a re-import would.
    by_id: dict[str, tuple[ImportRecord, Document]] = {}
    for record, document in batch:
        by_id[record.external_id] = (record, document)
    now = timezone.now()
    to_embed: list[int] = []
    with transaction.atomic():
        existing = {d.external_id: d for d in Document.objects.select_for_update()
                    .filter(source=source, external_id__in=list(by_id))}
        taken = set(Document.objects.filter(slug__in=[d.slug for _, d in by_id.values()])
                    .exclude(source=source, external_id__in=list(by_id)).values_list("slug", flat=True))
        new: list[Document] = []
        changed: list[Document] = []
        for external_id, (_record, document) in by_id.items():
            current = existing.get(external_id)
            if current is None:
                document.slug = _free_slug(document.slug, taken)
                taken.add(document.slug)
                if publish:
                    document.status, document.published_at = Document.Status.PUBLISHED, now
                new.append(document)
            elif (current.title, current.body, current.tags) != (document.title, document.body, document.tags) or (
                    publish and current.status != Document.Status.PUBLISHED):
                content_changed = (current.title, current.body) != (document.title, document.body)
                current.title, current.body, current.tags = document.title, document.body, document.tags
                if publish and current.status != Document.Status.PUBLISHED:
                    current.status, current.published_at = Document.Status.PUBLISHED, current.published_at or now
                if content_changed:
                    current.embedding_status = Document.EmbeddingStatus.PENDING
                    to_embed.append(current.pk)
                current.updated_at = now
                changed.append(current)
            else:
                report.unchanged += 1
                if current.embedding_status != Document.EmbeddingStatus.READY:
                    to_embed.append(current.pk)  # resume: imported before, never embedded
        Document.objects.bulk_create(new)
        Document.objects.bulk_update(changed, ["title", "body", "tags", "status", "published_at",
                                               "embedding_status", "updated_at"])
        to_embed.extend(d.pk for d in new)
    report.created += len(new)
    report.updated += len(changed)
    report.to_embed.extend(to_embed)
    return to_embed


def _free_slug(slug: str, taken: set[str]) -> str:
    """``slug``, or ``slug-2``, ``slug-3``... free both in this batch and in the database."""
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug[:300]}-{n}", n + 1
        if candidate not in taken and Document.objects.filter(slug=candidate).exists():
            taken.add(candidate)
    return candidate
