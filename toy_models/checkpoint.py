"""Checkpoint I/O: state dicts as safetensors (written atomically, read back with checks),
optimizer state, JSON configs validated field by field, and a model's identity.

Nothing the project reads is unpickled: tensors are safetensors, everything else is JSON.

A toy model directory::

    model.safetensors   the state_dict (float32, or float16 in a shipped entry)
    config.json         {"model": ModelConfig fields, ...training figures, "tokenizer_sha256",
                         "untrained_tokens": ids never an input in training}
    tokenizer.json      the tokenizer it was trained with
    record.json         shipped entries: the sha256 of every shipped file, checked on load

Every error names the file (and the field or tensor) on one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import one_line
from .files import check_readable_file, file_sha256, write_bytes_atomic, write_json_atomic
from .records import check_keys, is_finite_number, parse_json

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from .model import ToyTransformer

# torch and safetensors are imported inside the functions that use them: the CLIs name these
# files while checking their arguments, before any heavy import.

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "record.json"


def model_files(directory: Path) -> list[Path]:
    """The files of a model directory that loading it reads (``record.json`` when shipped)."""
    return [directory / name for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, RECORD_FILE)]


# Integer config fields must lie in 1..MAX_SIZE; the weights file's header is then compared
# with the shapes the config implies before anything is allocated (an absurd size is refused
# there, not by running out of memory).
MAX_SIZE = 1 << 24
MAX_MODULES = 1 << 12  # n_layers, head counts: each one builds Python objects
MANY_MODULES = {"n_layers", "n_heads", "n_qk_heads"}
WEIGHT_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


# ----------------------------------------------------------------- state dicts
def save_state_atomic(
    source: nn.Module | dict[str, Tensor],
    path: Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a module's state_dict (or a dict of tensors) to ``path`` as safetensors, through a
    temp file and a rename; ``dtype`` converts floating-point tensors (e.g. float16 to ship);
    ``metadata``: the file's string header entries. Every safetensors file of the project is
    written here: the bytes are made in memory and written by ``write_bytes_atomic``, so a
    failed write (disk full) is one ``WriteError`` line, not the library's own exception."""
    from safetensors.torch import save
    from torch import nn

    tensors = source.state_dict() if isinstance(source, nn.Module) else source
    tensors = {
        name: t.detach()
        .to("cpu", dtype if dtype is not None and t.is_floating_point() else None)
        .contiguous()
        for name, t in tensors.items()
    }
    write_bytes_atomic(path, save(tensors, metadata))


def read_tensors(path: Path, what: str = "weights") -> dict[str, Tensor]:
    """Every tensor of a safetensors file, or one line saying why not."""
    from safetensors.torch import load

    check_readable_file(path, "checkpoint file")
    try:
        return load(path.read_bytes())
    except OSError:
        raise
    except Exception as exc:  # safetensors raises its own error types on damaged files
        raise ValueError(f"{path}: unreadable {what} ({one_line(exc)})") from None


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise ValueError(f"{path}: unreadable weights ({one_line(exc)})") from None


def _check_names_and_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path, config_name
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = [
            f"{what} {names[:3]}"
            for what, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise ValueError(f"{path}: tensors do not match the config in {config_name} "
                         f"({', '.join(parts)})")  # fmt: skip
    for name, shape in found.items():
        if shape != expected[name]:
            raise ValueError(
                f"{path}: {name} has shape {shape}, the config in {config_name} implies "
                f"{expected[name]}"
            )


def load_checked(
    module: nn.Module | Callable[[], nn.Module], path: Path, config_name: str
) -> nn.Module:
    """Fill a module from a safetensors file after checking tensor names, shapes and dtypes.
    A file may store any float type of ``WEIGHT_DTYPES`` (the zoo ships float16); the module
    runs in float32 whatever it is, the dtype every model here computes in.

    ``module`` was built from the config in ``config_name``; a mismatch names both files. Pass
    a function that builds it instead, and it is first built without memory (on the meta
    device) and checked against the file's header, so that a config implying absurd sizes is
    refused before anything is allocated.
    """
    import torch
    from torch import nn

    check_readable_file(path, "checkpoint file")
    if not isinstance(module, nn.Module):
        build = module
        with torch.device("meta"):
            probe = build()
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        _check_names_and_shapes(expected, _header_shapes(path), path, config_name)
        module = build()
    tensors = read_tensors(path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    _check_names_and_shapes(
        expected, {k: tuple(v.shape) for k, v in tensors.items()}, path, config_name
    )
    loaded = {}
    for name, tensor in tensors.items():
        if str(tensor.dtype) not in WEIGHT_DTYPES:
            raise ValueError(f"{path}: {name} is stored as {tensor.dtype}, not floating point")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {name} holds NaN or infinite values")
        loaded[name] = tensor.float()  # checked again as it is used: a float64 file's finite
        # values beyond float32 became infinite (the narrower types' finite values stay finite:
        # their second pass cost up to 0.6 s a trace in torch's thread pool on a busy machine)
        if tensor.dtype == torch.float64 and not torch.isfinite(loaded[name]).all():
            raise ValueError(f"{path}: {name} holds values beyond float32's range "
                             f"(largest |x| {float(tensor.abs().max()):.3g})")  # fmt: skip
    module.load_state_dict(loaded)
    return module


# ----------------------------------------------------------------- optimizer state
def _optimizer_slots(optimizer: torch.optim.Optimizer):
    """(index, parameter) in the numbering of ``optimizer.state_dict()``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return list(enumerate(params))


OPTIMIZER_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")  # Adam and AdamW, amsgrad off


def save_optimizer_atomic(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer's per-parameter state as safetensors (``state.{index}.{key}``). The
    hyperparameters are not stored: the trainer rebuilds them from its config."""
    state = optimizer.state_dict()["state"]
    tensors = {}
    for index, slots in state.items():
        if set(slots) != set(OPTIMIZER_STATE_KEYS):
            raise TypeError(f"unsupported optimizer state keys {sorted(slots)}")
        for key in OPTIMIZER_STATE_KEYS:
            tensors[f"state.{index}.{key}"] = slots[key]
    save_state_atomic(tensors, path)


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, step: int | None = None) -> None:
    """Restore what ``save_optimizer_atomic`` wrote into an optimizer built for the same
    parameters, after checking every tensor's name, shape and dtype, and its values: finite,
    second moments not negative, and (``step``: the checkpoint's) each parameter's step count
    a whole number of at most ``step``, the largest equal to it (every step updates some
    parameter), so that the state cannot belong to another point of the run."""
    import torch

    tensors = read_tensors(path, "optimizer state")
    state, expected = {}, set()
    for index, param in _optimizer_slots(optimizer):
        names = {key: f"state.{index}.{key}" for key in OPTIMIZER_STATE_KEYS}
        present = [key for key, name in names.items() if name in tensors]
        if not present:
            if step:  # the project's trainers put every parameter in the loss from step 1
                raise ValueError(f"{path}: no state for parameter {index} at step {step}")
            continue  # a parameter that never had a gradient has no state
        if len(present) != len(names):
            raise ValueError(f"{path}: incomplete state of parameter {index} ({present})")
        for key, name in names.items():
            shape = () if key == "step" else tuple(param.shape)
            tensor = tensors[name]
            if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
                raise ValueError(
                    f"{path}: {name} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                    f"torch.float32 {shape}"
                )
            expected.add(name)
        state[index] = {key: tensors[name] for key, name in names.items()}
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise ValueError(f"{path}: tensors for no parameter of this run: {unexpected[:3]}")
    _check_optimizer_values(state, path, step)
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


def _check_optimizer_values(state: dict[int, dict], path: Path, step: int | None) -> None:
    """The values ``load_optimizer`` checks (its docstring), naming the first one off."""
    import torch

    for index, slots in state.items():
        for key, tensor in slots.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{path}: state.{index}.{key} holds NaN or infinite values")
        if (slots["exp_avg_sq"] < 0).any():
            raise ValueError(f"{path}: state.{index}.exp_avg_sq holds negative values")
        count = float(slots["step"])
        if count != int(count) or count < 1 or (step is not None and count > step):
            raise ValueError(f"{path}: state.{index}.step is {count:g}, not a step count of "
                             f"this checkpoint (step {step})")  # fmt: skip
    if step:
        counts = [int(slots["step"]) for slots in state.values()]
        if not counts or max(counts) != step:
            raise ValueError(f"{path}: its state is of step {max(counts, default=0)}, the "
                             f"checkpoint's of step {step}")  # fmt: skip


# ----------------------------------------------------------------- JSON files
def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or one line saying why not."""
    check_readable_file(path, "file")
    try:
        data = parse_json(path.read_text())
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# Upper limits of config floats whose larger values make no model of this kind: an epsilon
# of 1e30 swamps every variance it is added to (a fuzz pass found such a model evaluated and
# shipped, every figure 0, exit 0), an init std of 1 is far beyond any trained here (0.02).
FLOAT_LIMITS = {"ln_eps": 1e-2, "init_std": 1.0}


def check_value(kind: str, value, where: str, limit: float = MAX_SIZE) -> None:
    """Refuse a JSON value that is not of ``kind`` (``"int"``: 1..limit, ``"float"``: finite,
    positive and at most ``limit``, ``"bool"``), naming ``where`` it was found."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        if not 1 <= value <= limit:
            raise ValueError(f"{where} must be in 1..{limit}, got {value}")
    elif kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{where} must be a number, got {value!r}")
        if not (is_finite_number(value) and value > 0):
            shown = f"{value}" if len(str(value)) <= 40 else f"{str(value)[:40]}..."
            raise ValueError(f"{where} must be finite and positive, got {shown}")
        if value > limit:
            raise ValueError(f"{where} must be at most {limit:g}, got {value:g}")


def config_from_dict(cls, data, where: str = "config"):
    """Build the frozen config dataclass ``cls`` from JSON data, checking every field's type
    and range: integers are positive and at most ``MAX_SIZE`` (``MAX_MODULES`` for layer and
    head counts), floats finite, positive and within ``FLOAT_LIMITS``, booleans booleans.
    Every field must be there: its writer writes them all, and a default filled in would
    describe another model (a missing ``d_head`` read as 32 was reported as a weight of the
    wrong shape). Errors name the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    check_keys(data, where, (), known)  # a key it does not know; then each value's check
    for name, value in data.items():
        kind = known[name].type  # a string under ``from __future__ import annotations``
        kind = kind if isinstance(kind, str) else kind.__name__
        limit = MAX_MODULES if name in MANY_MODULES else FLOAT_LIMITS.get(name, MAX_SIZE)
        check_value(kind, value, f"{where}.{name}", limit)
    check_keys(data, where, known)  # every field: a default filled in is another model
    try:
        return cls(**data)
    except TypeError as exc:  # (every field is there and typed: a dataclass's own check)
        raise ValueError(f"{where}: {exc}") from None


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over named tensors (names, shapes and bytes, in name order): the checksum the
    project's files (graphs, dashboards, statistics) keep in their header."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def content_sha256(tensors: dict[str, Tensor], header: dict) -> str:
    """The checksum a file of tensors with a JSON header (graphs, dashboards, statistics) keeps
    in its header's ``sha256``: over the tensors and over the rest of the header (as it reads
    back from JSON), so that a changed setting in the header is caught as a changed tensor is."""
    rest = json.loads(json.dumps({k: v for k, v in header.items() if k != "sha256"}))
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))  # NaN too: checked later
    return hashlib.sha256((tensors_sha256(tensors) + text).encode()).hexdigest()


def check_content_sha256(tensors: dict[str, Tensor], header: dict) -> None:
    """Refuse a file whose tensors or header are not the ones its ``sha256`` was made of."""
    if header.get("sha256") != content_sha256(tensors, header):
        raise ValueError("its tensors or header do not match the checksum in its header (damaged)")


def json_sha256(data: dict) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_recorded_hashes(directory: Path, figures: tuple[str, ...]) -> None:
    """If ``directory`` holds a ``record.json`` (a shipped entry), every file it lists must
    still have its recorded SHA-256; beside the table it holds the ship's ``figures`` (its
    ``record`` function's keys) and nothing else (a key of any name was read and ignored: a
    fuzz pass)."""
    record_path = directory / RECORD_FILE
    if not record_path.exists():
        return
    record = read_json(record_path)
    try:
        check_keys(record, "it", ("sha256",), figures)
    except ValueError as exc:
        raise ValueError(f"{record_path}: not a ship record ({exc})") from None
    hashes = record.get("sha256")
    if not isinstance(hashes, dict) or not all(isinstance(h, str) for h in hashes.values()):
        raise ValueError(f"{record_path}: no valid 'sha256' table")
    for name, recorded in sorted(hashes.items()):
        path = directory / name
        if Path(name).name != name:
            raise ValueError(f"{record_path}: {name!r} is not a file name")
        try:
            check_readable_file(path, "file")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc} (listed in {record_path})") from None
        if file_sha256(path) != recorded:
            raise ValueError(f"{path}: changed since shipped (sha256 differs from {RECORD_FILE})")


# ----------------------------------------------------------------- the toy model
def save_model(
    model: ToyTransformer, directory: Path, dtype: torch.dtype | None = None, extra=None
) -> None:
    """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``
    (``dtype``: the storage type of the weights, default float32)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": asdict(model.cfg), **(extra or {})}
    json.dumps(config)  # not JSON-serialisable: fail before any file is written
    save_state_atomic(model, directory / WEIGHTS_FILE, dtype or torch.float32)
    write_json_atomic(directory / CONFIG_FILE, config)


def load_model(directory: Path) -> ToyTransformer:
    """Load a checkpoint directory, refusing (with the file and the mismatch) anything off:
    missing files, a config field of the wrong type or range, weights that do not match the
    config, and files of a shipped entry that changed since it was shipped."""
    from .model import ModelConfig, ToyTransformer

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        check_readable_file(path.absolute(), "checkpoint file")  # "config.json" alone: where?
    data = read_json(config_path)
    if "model" not in data:
        raise ValueError(f"{config_path}: not a valid model config (no 'model' entry)")
    # beside the model config, a run's figures (``toy_models.ship.RunFields``) and nothing
    # else: a key of any name was read and ignored (a fuzz pass)
    from dataclasses import fields

    from .ship import RunFields

    try:
        check_keys(data, "its config", ("model",), [f.name for f in fields(RunFields)])
    except ValueError as exc:
        raise ValueError(f"{config_path}: not a valid model config ({exc})") from None
    try:
        cfg = ModelConfig.from_dict(data["model"])
    except ValueError as exc:
        raise ValueError(f"{config_path}: not a valid model config ({exc})") from None
    model = load_checked(lambda: ToyTransformer(cfg), weights_path, config_path.name)
    tokenizer_path = directory / TOKENIZER_FILE
    model.tokenizer_sha256 = file_sha256(tokenizer_path) if tokenizer_path.is_file() else None
    if model.tokenizer_sha256 is not None:
        # The tokenizer beside it is what records BOS (``load_tokenizer`` refuses one whose BOS
        # is not id 0, prepended once): with it set, the library's entry points check a
        # caller's ids for BOS at position 0 (``circuits.attribution.prompt_tokens``) for
        # ``ToyTransformer.load`` as for ``load_pretrained``. Without the file nothing in the
        # directory says what BOS is (the config has no such field), and bos_id stays None.
        from .tokenizer import bos_id, load_tokenizer

        model.bos_id = bos_id(load_tokenizer(tokenizer_path))
    model.untrained_tokens = _untrained_tokens(data, cfg.d_vocab, config_path)
    from .ship import RECORD_FIGURES

    check_recorded_hashes(directory, RECORD_FIGURES)
    return model


def _untrained_tokens(data: dict, vocab: int, where: Path) -> frozenset[int] | None:
    """The config's ``untrained_tokens`` (``toy_models.train.untrained_tokens``): distinct
    token ids below ``vocab``; None when the config does not say (an older run)."""
    ids = data.get("untrained_tokens")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids
    ):
        raise ValueError(f"{where}: 'untrained_tokens' must be a list of token ids below {vocab}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: 'untrained_tokens' lists a token twice")
    return frozenset(ids)


def fingerprint(model: ToyTransformer) -> str:
    """A toy model's identity: SHA-256 over its config, its tokenizer file's hash and its
    weights (each name, shape and float32 bytes, in sorted order).

    Replacement sets and statistics are bound to it, so a changed config value (``ln_eps``),
    another tokenizer or one changed weight each make another model; the dtype the weights
    were stored in does not, as long as the float32 values agree.
    """
    import torch

    digest = hashlib.sha256()
    header = {"config": asdict(model.cfg), "tokenizer_sha256": model.tokenizer_sha256}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
