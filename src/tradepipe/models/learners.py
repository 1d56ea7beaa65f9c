"""The three model kinds (R6.1): XGBoost and LightGBM through their native training APIs, an
LSTM in PyTorch over a window of input vectors.

A :class:`Learner` fits on a training slice with early stopping on a validation slice and
returns a :class:`Fitted` model that predicts class probabilities natively (what the fold
metrics use) and exports itself to ONNX (what the services run: ONNX Runtime is 5-10x
faster than the native single-row APIs, see BENCHMARKS.md "Inference"). Classes are
``CLASSES`` = SELL, HOLD, BUY as 0, 1, 2. Training is balanced by class weights computed on
the training slice only, so a model cannot score by always saying the majority class.

Everything is seeded and single-machine deterministic: same rows + seed -> same bytes.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import ClassVar

import numpy as np

CLASSES = ("SELL", "HOLD", "BUY")
TRAIN_THREADS = 2  # the box has 2 cores; fixed so results do not depend on the machine's count

# OpenMP threads (XGBoost, LightGBM, torch) spin while they wait by default; when another
# process shares the cores that spinning made training 4-6x slower (measured: XGBoost 2.9 s
# -> 17 s on the sample next to one busy process). Passive waiting costs nothing when the
# cores are free. Only effective before the first of those libraries loads (they are imported
# lazily, below), and an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def class_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights that make the three classes weigh the same (absent classes: 0)."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    per_class = np.divide(len(y) / (len(CLASSES) * counts), 1.0, where=counts > 0, out=np.zeros(len(CLASSES)))
    return per_class[y]


class Fitted:
    """A trained model: native probabilities, ONNX export, native bytes for the registry."""

    kind: ClassVar[str]
    native_suffix: ClassVar[str]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(rows, 3) probabilities for ``x`` of shape (rows, k), or (rows, window, k) for the LSTM."""
        raise NotImplementedError

    def onnx_bytes(self, n_inputs: int, window: int) -> bytes:
        raise NotImplementedError

    def native_bytes(self) -> bytes:
        raise NotImplementedError

    best_iteration: int = 0


class Learner:
    kind: ClassVar[str]
    display: ClassVar[str]  # registry name prefix, e.g. "XGBoost" -> "XGBoost-v3"
    window: int = 1  # input rows per prediction

    def __init__(self, **params) -> None:
        self.params = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict:
        return {}

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, seed: int) -> Fitted:
        raise NotImplementedError


# --- XGBoost -------------------------------------------------------------------------------

class _FittedXGBoost(Fitted):
    kind, native_suffix = "xgboost", "ubj"

    def __init__(self, booster, best_iteration: int) -> None:
        self.booster, self.best_iteration = booster, best_iteration

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(x)

    def onnx_bytes(self, n_inputs: int, window: int) -> bytes:
        from onnxmltools.convert import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        # a fixed graph name: the converter's default is a random uuid, which would make the
        # same model export to different bytes (R6.4)
        model = convert_xgboost(self.booster, name="xgboost", initial_types=[("x", FloatTensorType([None, n_inputs]))],
                                target_opset=15)
        return model.SerializeToString()

    def native_bytes(self) -> bytes:
        return bytes(self.booster.save_raw("ubj"))


class XGBoostLearner(Learner):
    kind, display = "xgboost", "XGBoost"

    @classmethod
    def default_params(cls) -> dict:
        return {"max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 5.0,
                "num_boost_round": 400, "early_stopping_rounds": 30}

    def fit(self, x, y, x_val, y_val, *, seed):
        import xgboost as xgb

        params = dict(self.params)
        rounds, patience = params.pop("num_boost_round"), params.pop("early_stopping_rounds")
        params.update(objective="multi:softprob", num_class=len(CLASSES), eval_metric="mlogloss",
                      tree_method="hist", nthread=TRAIN_THREADS, seed=seed)
        train = xgb.DMatrix(x, label=y, weight=class_weights(y))
        val = xgb.DMatrix(x_val, label=y_val, weight=class_weights(y_val))
        booster = xgb.train(params, train, rounds, evals=[(val, "val")], early_stopping_rounds=patience,
                            verbose_eval=False)
        best = booster.best_iteration
        booster = booster[: best + 1]  # keep the trees up to the best validation round only
        booster.set_param({"nthread": 1})  # single-row inference: threads only add overhead
        return _FittedXGBoost(booster, best)


# --- LightGBM ------------------------------------------------------------------------------

class _FittedLightGBM(Fitted):
    kind, native_suffix = "lightgbm", "txt"

    def __init__(self, booster, best_iteration: int) -> None:
        self.booster, self.best_iteration = booster, best_iteration

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x, num_iteration=self.best_iteration, num_threads=1)

    def onnx_bytes(self, n_inputs: int, window: int) -> bytes:
        from onnxmltools.convert import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = convert_lightgbm(self.booster, name="lightgbm", initial_types=[("x", FloatTensorType([None, n_inputs]))],
                                 target_opset=15, zipmap=False)
        return model.SerializeToString()

    def native_bytes(self) -> bytes:
        return self.booster.model_to_string(num_iteration=self.best_iteration).encode()


class LightGBMLearner(Learner):
    kind, display = "lightgbm", "LightGBM"

    @classmethod
    def default_params(cls) -> dict:
        return {"num_leaves": 15, "learning_rate": 0.05, "feature_fraction": 0.8, "bagging_fraction": 0.8,
                "bagging_freq": 1, "min_data_in_leaf": 50, "num_boost_round": 400, "early_stopping_rounds": 30}

    def fit(self, x, y, x_val, y_val, *, seed):
        import lightgbm as lgb

        params = dict(self.params)
        rounds, patience = params.pop("num_boost_round"), params.pop("early_stopping_rounds")
        params.update(objective="multiclass", num_class=len(CLASSES), num_threads=TRAIN_THREADS, seed=seed,
                      deterministic=True, force_row_wise=True, verbose=-1)
        train = lgb.Dataset(x, label=y, weight=class_weights(y), free_raw_data=True)
        val = lgb.Dataset(x_val, label=y_val, weight=class_weights(y_val), reference=train)
        booster = lgb.train(params, train, rounds, valid_sets=[val],
                            callbacks=[lgb.early_stopping(patience, verbose=False)])
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        return _FittedLightGBM(booster, booster.current_iteration())


# --- LSTM ----------------------------------------------------------------------------------

def _lstm_module(n_inputs: int, hidden: int, mean: np.ndarray, std: np.ndarray):
    import torch
    from torch import nn

    class WindowLSTM(nn.Module):
        """Scaling (fitted on the training slice) and NaN imputation are part of the module,
        so the exported ONNX graph takes raw input vectors, exactly as the services have them."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            self.lstm = nn.LSTM(n_inputs, hidden, batch_first=True)
            self.head = nn.Linear(hidden, len(CLASSES))

        def logits(self, x):
            x = (x - self.mean) / self.std
            x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # missing -> training mean
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

        def forward(self, x):
            return torch.softmax(self.logits(x), dim=-1)

    return WindowLSTM()


class _FittedLSTM(Fitted):
    kind, native_suffix = "lstm", "pt"

    def __init__(self, module, best_iteration: int) -> None:
        self.module, self.best_iteration = module.eval(), best_iteration

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def onnx_bytes(self, n_inputs: int, window: int) -> bytes:
        import torch

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated but needs no onnxscript and exports nn.LSTM as
            # one ONNX LSTM node; batch is fixed to 1, what the service runs
            warnings.simplefilter("ignore")
            torch.onnx.export(self.module, (torch.zeros(1, window, n_inputs),), buffer, input_names=["x"],
                              output_names=["probabilities"], dynamo=False, opset_version=17)
        return buffer.getvalue()

    def native_bytes(self) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save(self.module.state_dict(), buffer)
        return buffer.getvalue()


class LSTMLearner(Learner):
    kind, display = "lstm", "LSTM"

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.window = int(self.params["window"])

    @classmethod
    def default_params(cls) -> dict:
        return {"window": 16, "hidden": 32, "learning_rate": 1e-3, "batch_size": 256, "max_epochs": 30,
                "patience": 4}

    def fit(self, x, y, x_val, y_val, *, seed):
        import torch

        p = self.params
        torch.manual_seed(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)
        try:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
            mean = np.nan_to_num(np.nanmean(flat, axis=0))
            std = np.nan_to_num(np.nanstd(flat, axis=0), nan=1.0)
            std[std < 1e-12] = 1.0  # a constant input (e.g. a pattern that never fired) stays 0
            module = _lstm_module(x.shape[-1], int(p["hidden"]), mean, std)
            optimizer = torch.optim.Adam(module.parameters(), lr=float(p["learning_rate"]))
            loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(
                np.bincount(y, minlength=3).sum() / (3 * np.maximum(np.bincount(y, minlength=3), 1)),
                dtype=torch.float32))
            xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
            xv, yv = torch.from_numpy(x_val.astype(np.float32)), torch.from_numpy(y_val.astype(np.int64))
            generator = torch.Generator().manual_seed(seed)
            best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
            for epoch in range(int(p["max_epochs"])):
                module.train()
                for batch in torch.randperm(len(xt), generator=generator).split(int(p["batch_size"])):
                    optimizer.zero_grad()
                    loss_fn(module.logits(xt[batch]), yt[batch]).backward()
                    optimizer.step()
                module.eval()
                with torch.inference_mode():
                    val_loss = float(loss_fn(module.logits(xv), yv))
                if val_loss < best_loss - 1e-6:
                    best_loss, best_epoch, stale = val_loss, epoch, 0
                    best_state = {k: v.clone() for k, v in module.state_dict().items()}
                else:
                    stale += 1
                    if stale >= int(p["patience"]):
                        break
            if best_state is None:
                raise FloatingPointError("the LSTM's validation loss was never finite (inputs out of range?)")
            module.load_state_dict(best_state)
        finally:
            torch.set_num_threads(threads)
        return _FittedLSTM(module, best_epoch)


LEARNERS: dict[str, type[Learner]] = {cls.kind: cls for cls in (XGBoostLearner, LightGBMLearner, LSTMLearner)}
