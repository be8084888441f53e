"""What the flow would load on the worker's thread mid-stream, stopping every user while it
loads, is loaded beside the worker at start (:func:`dataflow.runner.load_lazy_parts`):
after it, a category's first forecast (either model) and the keywords of a text with
Chinese and English words import and load nothing more. A fresh interpreter, so nothing is
loaded yet."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

SCRIPT = """
import sys
from dataflow.runner import load_lazy_parts
from operators.apps.demand import DemandForecaster, DemandParams
from operators.text.keywords import background_idf, extract_keywords
from operators.text.tokens import chinese_segmenter, stop_words

load_lazy_parts()
before = set(sys.modules)
for model in ("holt-winters", "snarimax"):
    params = DemandParams(season=3, horizon=3, model=model, warm_up_seasons=2)
    forecaster = DemandForecaster(params)
    for y in [1.0, 2.0, 6.0] * 4:
        forecaster.learn_one(y)
        forecaster.forecast(3)
    assert forecaster.model == model, forecaster.model
assert extract_keywords("华为手机拍照很好 fast delivery", 3)
print(sorted(set(sys.modules) - before))
print(*(f.cache_info().misses for f in (background_idf, chinese_segmenter, stop_words)))
"""


def test_after_the_lazy_parts_are_loaded_no_event_loads_anything() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "1 1 1"]  # one load each: the one at start


SERIALISED = """
import sys, threading, time
from dataflow.runner import load_lazy_parts
from operators.text.embedding.encoder import LIBRARY_IMPORTS, Embedder

embedder = Embedder(cache_size=0, lazy=True)
with LIBRARY_IMPORTS:
    preload = threading.Thread(target=load_lazy_parts)
    preload.start()
    embedder.ready()  # starts the model's load on its own thread
    time.sleep(1.0)
    print(sorted(m for m in ("torch", "river", "sklearn") if m in sys.modules))
preload.join()
print(embedder.device, "river" in sys.modules)
"""


def test_the_preload_and_the_models_load_import_one_at_a_time() -> None:
    # SciPy, under River and scikit-learn, reads a half-imported torch if they overlap.
    done = subprocess.run(
        [sys.executable, "-c", SERIALISED], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "cpu True"]
