"""The model registry (R6.1, R6.4): a directory of versioned models with their metadata.

Layout, one directory per version, written once and never changed::

    <registry>/<kind>/v<N>/card.json     ModelCard: name "XGBoost-v3", inputs and their order,
                                          training window, data hash, seed, fold metrics,
                                          library versions, sha256 of every file
    <registry>/<kind>/v<N>/model.onnx    what the services run (ONNX Runtime)
    <registry>/<kind>/v<N>/model.<ext>   the native model (xgboost .ubj, lightgbm .txt,
                                          torch state_dict .pt), for audit and retraining

A version is written to a temporary directory and renamed into place, so a crash never leaves
a half-written version and two trainers never get the same number. Loading checks every
file's hash and the ONNX graph's shape against the card, so a missing, corrupt or mismatched
model fails at load with the path and the reason, never at the first prediction.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tradepipe.models.inputs import InputError, check_inputs

CARD = "card.json"
ONNX_FILE = "model.onnx"
INPUTS_KEY = "tradepipe.inputs"  # ONNX metadata: the input names in order, written at save
_VERSION_DIR = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^(?P<display>[A-Za-z]+)-v(?P<version>\d+)$")
DISPLAY = {"xgboost": "XGBoost", "lightgbm": "LightGBM", "lstm": "LSTM"}


class ModelLoadError(RuntimeError):
    """A registry entry cannot be used; the message names the file and the reason."""


class TrainingWindow(msgspec.Struct, frozen=True, rename="camel"):
    start: datetime
    end: datetime
    rows: int


class ModelCard(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str  # "XGBoost-v3"
    kind: str  # xgboost | lightgbm | lstm
    version: int
    created: datetime
    inputs: list[str]  # model inputs in vector order (tradepipe.models.inputs)
    window: int = 1  # input vectors per prediction (LSTM sequence length; 1 for trees)
    symbols: list[str]
    timeframe: str
    horizon: int  # bars ahead the label looks
    dead_band: float  # |return| below this is HOLD
    training_window: TrainingWindow  # rows the final model was fitted on
    data_hash: str  # sha256 of the labelled inputs the model saw
    data_files: dict[str, str] = {}  # input file name -> sha256 of its bytes
    seed: int
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}  # {"folds": [...], "overall": {...}, "baselines": {...}}
    accuracy: float | None = None  # out-of-sample accuracy over all folds, published as model.accuracy
    libraries: dict[str, str] = {}
    files: dict[str, str] = {}  # file name -> sha256

    @property
    def time_horizon(self) -> str:
        """The horizon as a duration string, e.g. "5m" for 5 bars of 1m."""
        from tradepipe.sources.files import timeframe_from_ms, timeframe_ms

        return timeframe_from_ms(self.horizon * timeframe_ms(self.timeframe))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_session(onnx_bytes: bytes):
    """An ONNX Runtime session on one thread, CPU: how models run here (one row at a time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


class LoadedModel:
    """A registry entry ready to predict: ``predict_proba(x)`` with x of shape (k,) for trees
    or (window, k) for the LSTM, float32, in ``card.inputs`` order; returns SELL, HOLD, BUY
    probabilities. One ONNX Runtime session, one thread (a service runs one row at a time)."""

    def __init__(self, card: ModelCard, path: Path, onnx_bytes: bytes) -> None:
        self.card, self.path = card, path
        try:
            self._session = onnx_session(onnx_bytes)
        except Exception as exc:
            raise ModelLoadError(f"{path / ONNX_FILE}: not a loadable ONNX model ({exc})") from None
        expected = [card.window, len(card.inputs)] if card.window > 1 else [len(card.inputs)]
        shape = self._session.get_inputs()[0].shape
        if [d for d in shape[1:]] != expected:
            raise ModelLoadError(
                f"{path / ONNX_FILE}: the graph takes rows of shape {shape[1:]}, the card lists "
                f"{expected} ({len(card.inputs)} inputs, window {card.window})"
            )
        listed = self._session.get_modelmeta().custom_metadata_map.get(INPUTS_KEY)
        if listed is not None and listed.split(",") != list(card.inputs):
            raise ModelLoadError(
                f"{path / ONNX_FILE}: the graph was trained on inputs {listed.split(',')}, the card lists "
                f"{list(card.inputs)} (same inputs in another order would predict garbage)"
            )
        self._input = self._session.get_inputs()[0].name
        self._outputs = ["probabilities"]
        self._shape = (1, *expected)

    def predict_proba(self, x: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """Probabilities for one row; with ``timeout_s``, a run still going after that long is
        aborted by the :data:`WATCHDOG` (ONNX Runtime raises)."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self._shape[1:]:
            raise InputError(f"{self.card.name} takes input of shape {self._shape[1:]}, got {x.shape}")
        feed = {self._input: x.reshape(self._shape)}
        if timeout_s is None:
            return self._session.run(self._outputs, feed)[0][0]
        import onnxruntime as ort

        options = ort.RunOptions()
        with WATCHDOG.watch(options, timeout_s):
            return self._session.run(self._outputs, feed, options)[0][0]


class Watchdog:
    """Aborts ONNX Runtime runs that overrun their deadline, without a thread handoff per call.

    A run registers its ``RunOptions`` with a deadline; one daemon thread, woken every
    ``period_s``, sets ``terminate`` on those past it, and ONNX Runtime stops the run with an
    error. The caller pays a dict insert and delete (~1 us) instead of waking a worker thread
    (100-400 us on a 2-core VM, see BENCHMARKS.md "Inference"). A run is aborted at most
    ``period_s`` after its deadline.
    """

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self._watched: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @contextmanager
    def watch(self, options: Any, timeout_s: float):
        if self._thread is None:
            self._start()
        key = id(options)
        self._watched[key] = (time.monotonic() + timeout_s, options)
        try:
            yield
        finally:
            del self._watched[key]

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="onnx-watchdog", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.period_s)
            now = time.monotonic()
            for deadline, options in list(self._watched.values()):
                if now > deadline:
                    options.terminate = True


#: the process's watchdog for model runs with a timeout
WATCHDOG = Watchdog()


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, kind: str) -> list[int]:
        directory = self.root / kind
        if not directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _VERSION_DIR.match(p.name)))

    def cards(self) -> list[ModelCard]:
        """Every entry's card, by kind then version."""
        return [self.card(kind, v) for kind in sorted(DISPLAY) for v in self.versions(kind)]

    def is_empty(self) -> bool:
        return not any(self.versions(kind) for kind in DISPLAY)

    def resolve(self, model: str, version: int | str = "latest") -> tuple[str, int]:
        """(kind, version) of ``model``: a kind ("xgboost") with a version or "latest", or a
        name ("XGBoost-v3")."""
        match = _NAME.match(model)
        if match:
            kind = next((k for k, d in DISPLAY.items() if d.lower() == match["display"].lower()), None)
            if kind is None:
                raise ModelLoadError(f"unknown model {model!r}; kinds: {', '.join(DISPLAY)}")
            return kind, int(match["version"])
        kind = model.lower()
        if kind not in DISPLAY:
            raise ModelLoadError(f"unknown model {model!r}; use a kind ({', '.join(DISPLAY)}) or a name like XGBoost-v3")
        versions = self.versions(kind)
        if version == "latest":
            if not versions:
                raise ModelLoadError(f"no {kind} model in registry {self.root}; train one with `tradepipe train`")
            return kind, versions[-1]
        return kind, int(version)

    def entry_dir(self, kind: str, version: int) -> Path:
        return self.root / kind / f"v{version}"

    def card(self, kind: str, version: int) -> ModelCard:
        path = self.entry_dir(kind, version) / CARD
        try:
            return msgspec.json.decode(path.read_bytes(), type=ModelCard)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no such model card ({kind} v{version} is not in the registry)") from None
        except msgspec.DecodeError as exc:
            raise ModelLoadError(f"{path}: corrupt model card ({exc})") from None

    def load(self, model: str, version: int | str = "latest") -> LoadedModel:
        kind, number = self.resolve(model, version)
        card = self.card(kind, number)
        directory = self.entry_dir(kind, number)
        try:
            check_inputs(card.inputs)
        except InputError as exc:
            raise ModelLoadError(f"{directory / CARD}: {exc}") from None
        for name, digest in card.files.items():
            path = directory / name
            if not path.is_file():
                raise ModelLoadError(f"{path}: missing (listed in {CARD})")
            if sha256(path.read_bytes()) != digest:
                raise ModelLoadError(f"{path}: corrupt (sha256 differs from {CARD})")
        if ONNX_FILE not in card.files:
            raise ModelLoadError(f"{directory / CARD}: lists no {ONNX_FILE}")
        return LoadedModel(card, directory, (directory / ONNX_FILE).read_bytes())

    def save(self, card_fields: dict[str, Any], files: dict[str, bytes]) -> ModelCard:
        """Write a new version of ``card_fields["kind"]`` with ``files``; the card's name,
        version, created time and file hashes are filled in here. Returns the card."""
        kind = card_fields["kind"]
        if ONNX_FILE in files:
            files = {**files, ONNX_FILE: _with_inputs(files[ONNX_FILE], card_fields["inputs"])}
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root / kind))
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            while True:
                version = (self.versions(kind) or [0])[-1] + 1
                card = ModelCard(
                    **card_fields, name=f"{DISPLAY[kind]}-v{version}", version=version,
                    created=datetime.now().astimezone(),
                    files={name: sha256(data) for name, data in sorted(files.items())},
                )
                (staging / CARD).write_bytes(msgspec.json.format(msgspec.json.encode(card)))
                try:
                    os.rename(staging, self.entry_dir(kind, version))  # atomic; fails if taken
                    return card
                except OSError:
                    if not self.entry_dir(kind, version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _with_inputs(onnx_bytes: bytes, inputs: list[str]) -> bytes:
    """The ONNX model with its input names in order recorded in its metadata, so a card whose
    inputs were reordered or swapped is refused at load."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    kept = [p for p in model.metadata_props if p.key != INPUTS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=INPUTS_KEY, value=",".join(inputs))
    return model.SerializeToString()
