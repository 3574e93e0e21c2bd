"""The local model on ONNX Runtime (the deployed default) against sentence-transformers on
torch: the same vectors; exported once, then loaded by a process that never imports torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.llm.embeddings import get_embedding_backend
from apps.llm.embeddings.onnx import OnnxBackend
from apps.llm.embeddings.sentence_transformers import default_model_path
from tests.conftest import BASE_DIR, child_env

pytestmark = pytest.mark.model

TEXTS = [
    "How do I reset my password?",
    "Vector search " * 300,  # far past the model's 256 tokens: truncated as sentence-transformers does
    "Ünïcödé, accents and an emoji 🙂 in a sentence; 日本語のテキストも。",
    "x",
    "Tidal turbines turn the energy of ocean currents into electricity, and photovoltaic modules "
    "turn sunlight into current.",
    "  leading and trailing spaces  ",
    "A medium-length passage about embeddings, chunking and hybrid retrieval over a corpus.",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A backend exporting into a fresh cache, in batches of three (crossing batch boundaries)."""
    backend = OnnxBackend("onnx-under-test", CACHE_DIR=str(tmp_path_factory.mktemp("onnx")), BATCH_SIZE=3)
    assert not backend.onnx_path.exists()
    backend.load()
    return backend


def _max_difference(a, b):
    return max(abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))


def test_vectors_are_those_of_sentence_transformers_on_torch(exported):
    reference = get_embedding_backend("minilm-torch")
    assert exported.onnx_path.is_file()
    assert exported.model_id == reference.model_id and exported.dimensions == reference.dimensions == 384
    assert _max_difference(exported.embed_documents(TEXTS), reference.embed_documents(TEXTS)) < 1e-5
    assert _max_difference([exported.embed_query(TEXTS[0])], [reference.embed_query(TEXTS[0])]) < 1e-5
    # A batch's padding does not change a text's vector.
    alone = exported.embed_documents([TEXTS[4]])
    assert _max_difference(alone, [exported.embed_documents(TEXTS)[4]]) < 1e-5


def test_a_later_process_loads_the_export_without_torch(exported):
    script = (
        "import json, sys, django; django.setup()\n"
        "from apps.llm.embeddings.onnx import OnnxBackend\n"
        f"backend = OnnxBackend('child', CACHE_DIR={str(exported.onnx_path.parent)!r})\n"
        f"vector = backend.embed_query({TEXTS[0]!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'path': str(backend.onnx_path), 'vector': vector}))\n"
    )
    before = os.stat(exported.onnx_path).st_mtime_ns
    proc = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["path"] == str(exported.onnx_path)
    assert child["torch"] is False
    assert os.stat(exported.onnx_path).st_mtime_ns == before  # used, not written again
    assert _max_difference([child["vector"]], [exported.embed_query(TEXTS[0])]) < 1e-6


def _model_copy(tmp_path, name="model"):
    """The model directory with its files linked (the weights are not copied), config.json copied."""
    source, target = default_model_path(), tmp_path / name
    target.mkdir()
    for item in source.iterdir():
        if item.name == "config.json":
            shutil.copy(item, target / item.name)
        elif item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            (target / item.name).symlink_to(item)
    return target


def test_a_changed_model_is_not_served_by_an_old_export(tmp_path):
    copy = _model_copy(tmp_path)
    first = OnnxBackend("a", MODEL_PATH=str(copy), CACHE_DIR=str(tmp_path / "cache"))
    assert OnnxBackend("b", MODEL_PATH=str(copy), CACHE_DIR=str(tmp_path / "cache")).onnx_path == first.onnx_path
    os.utime(copy / "config.json", ns=(1, 1))  # as a reinstalled or edited model file would
    assert OnnxBackend("c", MODEL_PATH=str(copy), CACHE_DIR=str(tmp_path / "cache")).onnx_path != first.onnx_path


def test_a_model_it_cannot_pool_is_refused_at_start_up(tmp_path):
    copy = _model_copy(tmp_path)
    pooling = copy / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ImproperlyConfigured, match="mean Pooling"):
        OnnxBackend("cls", MODEL_PATH=str(copy), CACHE_DIR=str(tmp_path / "cache"))


def test_prepare_embedding_models_loads_each_backend_ahead_of_time(exported, settings, tmp_path):
    from io import StringIO

    from django.core.management import call_command

    from apps.llm.embeddings import reset_embedding_backends

    settings.EMBEDDING_BACKENDS = {
        "default": {"BACKEND": "apps.llm.embeddings.testing.DeterministicBackend", "OPTIONS": {}},
        "local": {"BACKEND": "apps.llm.embeddings.onnx.OnnxBackend",
                  "OPTIONS": {"ONNX_PATH": str(tmp_path / "minilm.onnx")}},
    }
    reset_embedding_backends()
    shutil.copy(exported.onnx_path, tmp_path / "minilm.onnx")  # an export made elsewhere (the image's)
    out = StringIO()
    try:
        call_command("prepare_embedding_models", stdout=out)
        assert get_embedding_backend("local")._model is not None  # loaded: the first query waits for nothing
    finally:
        reset_embedding_backends()
    lines = out.getvalue().splitlines()
    assert lines == ["default: DeterministicBackend, nothing to load",
                     f"local: OnnxBackend sentence-transformers/all-MiniLM-L6-v2 ready ({tmp_path / 'minilm.onnx'})"]


def test_a_worker_prepares_before_forking_and_each_child_embeds(exported):
    """The Celery worker prepares the model in its main process, then forks its pool. A session
    made before the fork is not the children's (a child making its own then hung; one using
    the parent's ran at half speed): prepare() makes none, and each child loads the export."""
    script = (
        "import json, os, django; django.setup()\n"
        "from apps.llm.embeddings.onnx import OnnxBackend\n"
        f"backend = OnnxBackend('worker', CACHE_DIR={str(exported.onnx_path.parent)!r})\n"
        "backend.prepare()\n"
        "assert backend._model is None\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        f"    os.write(write, json.dumps(backend.embed_query({TEXTS[0]!r})).encode()); os._exit(0)\n"
        "os.close(write); print(os.fdopen(read).read())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vector = json.loads(proc.stdout.strip().splitlines()[-1])
    assert _max_difference([vector], [exported.embed_query(TEXTS[0])]) < 1e-6


def test_a_damaged_export_is_written_again(exported, tmp_path):
    damaged = tmp_path / "minilm.onnx"
    damaged.write_bytes(exported.onnx_path.read_bytes()[:4096])  # a copy cut short
    backend = OnnxBackend("damaged", ONNX_PATH=str(damaged))
    vector = backend.embed_query(TEXTS[0])
    assert damaged.stat().st_size == exported.onnx_path.stat().st_size
    assert _max_difference([vector], [exported.embed_query(TEXTS[0])]) < 1e-6


def test_a_single_query_does_not_wait_for_a_batch_in_progress(exported):
    """Batches take the model's lock one at a time; a question runs beside one (an ONNX Runtime
    session takes concurrent calls) instead of waiting for its slice, and gets its own vector."""
    import threading

    backend = OnnxBackend("concurrent", ONNX_PATH=str(exported.onnx_path), BATCH_SIZE=8)
    backend.load()
    passages = [f"{TEXTS[1]} passage {i}" for i in range(96)]  # 12 runs of 8 texts of 256 tokens
    done = threading.Event()
    batch = threading.Thread(target=lambda: (backend.embed_documents(passages), done.set()))
    batch.start()
    try:
        for _ in range(500):  # until the batch holds the lock
            if backend._lock._busy:
                break
            threading.Event().wait(0.002)
        assert backend._lock._busy and not done.is_set()
        vector = backend.embed_query(TEXTS[0])
        assert not done.is_set()  # answered while the batch still runs
    finally:
        batch.join(120)
    assert done.is_set()
    assert _max_difference([vector], [exported.embed_query(TEXTS[0])]) < 1e-6
