"""What ``featcheck inspect`` and ``featcheck diff`` run: the model a SPEC names and its input.

SPEC forms:

* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None)``;
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)`` when timm is installed;
* ``package.module:callable`` (imported from the current folder or the environment) and
  ``path/to/file.py:callable``: the callable, with the ``--arg key=value`` pairs as keyword
  arguments;
* ``path/to/model.pt``: a pickled whole model, only with ``--trust-pickle`` (unpickling runs
  whatever code the file names).

Weights are never downloaded: named models get random initialisation, drawn after
``torch.manual_seed(0)`` so that two runs show the same network. ``--weights FILE`` loads a state
dict with ``torch.load(weights_only=True)``, which runs no code.

Every mistake a user can make here (a spec that names nothing, a shape that is not one, a file
that is missing or holds the wrong thing) raises :class:`CLIError` with one line saying what was
expected, what was found and what to do; the command line prints it and exits 2.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import functools
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CLIError", "Loaded", "ModelInput", "load_model", "make_input", "parse_args_pairs", "parse_shape"]

SEED = 0
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl")


class CLIError(Exception):
    """Bad usage: one line for the user, exit status 2."""


@dataclass
class Loaded:
    """A built model and where its weights came from."""

    model: nn.Module
    spec: str
    weights: str  # "random initialisation", "weights from FILE", "" (as the callable built it)

    @property
    def description(self) -> str:
        """``torchvision:resnet18 (ResNet, random initialisation)``."""
        return f"{self.spec} ({', '.join(filter(None, [type(self.model).__name__, self.weights]))})"


# -- small parsers --------------------------------------------------------------------------------


def parse_shape(
    text: str, what: str, example: str = "2x3x224x224 (or a .pt file holding a tensor)", form: str = "sizes joined by 'x'"
) -> tuple[int, ...]:
    """``"2x3x224x224"`` to ``(2, 3, 224, 224)``; every size a positive int. ``form`` and
    ``example`` say in the message what ``what`` takes instead of a bad ``text``."""
    parts = text.lower().split("x")
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise CLIError(f"{what} must be {form} such as {example}, got {text!r}")
    zeros = [i for i, p in enumerate(parts) if int(p) == 0]
    if zeros:
        where = f" (size {', '.join(str(i + 1) for i in zeros)} of {len(parts)})" if len(parts) > 1 else ""
        raise CLIError(
            f"{what} {text} has a size of 0{where}: such an input holds no values for the model to run "
            f"on; give every size as 1 or more, such as {example}"
        )
    return tuple(int(p) for p in parts)


def parse_args_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``--arg key=value`` pairs as keyword arguments; values are Python literals where they
    parse as one (``10``, ``0.5``, ``True``, ``(1, 2)``, ``None``), strings otherwise."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--arg must be key=value with a Python name as key (num_classes=10), got {pair!r}")
        if key in out:
            raise CLIError(f"--arg {key} is given twice")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


# -- models ---------------------------------------------------------------------------------------


def _closest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _call(build: Any, spec: str, kwargs: dict[str, Any]) -> Any:
    """Call the spec's callable; what goes wrong inside user code becomes one line."""
    try:
        return build(**kwargs)
    except Exception as exc:
        given = f" with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}" if kwargs else " with no arguments"
        raise CLIError(f"building {spec}{given} failed: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _torchvision(name: str, spec: str, kwargs: dict[str, Any]) -> Loaded:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise CLIError(f"torchvision has no model {name!r}{_closest(name, names)} (see torchvision.models.list_models())")
    if "weights" in kwargs:
        raise CLIError("featcheck never downloads weights: drop --arg weights=... and load a state dict with --weights FILE")
    model = _call(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), spec, kwargs)
    return Loaded(model, spec, "random initialisation")


def _timm(name: str, spec: str, kwargs: dict[str, Any]) -> Loaded:
    try:
        import timm
    except ImportError:
        raise CLIError(f"{spec} needs timm, which is not installed here: pip install timm") from None
    names = timm.list_models()
    if name not in names:
        raise CLIError(f"timm has no model {name!r}{_closest(name, names)} (see timm.list_models())")
    if kwargs.get("pretrained"):
        raise CLIError("featcheck never downloads weights: drop --arg pretrained=True and load a state dict with --weights FILE")
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    model = _call(lambda **kw: timm.create_model(name, pretrained=False, **kw), spec, kwargs)
    return Loaded(model, spec, "random initialisation: timm weights are never downloaded")


def _attribute(obj: Any, path: str, where: str) -> Any:
    for part in path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise CLIError(f"{where} has no attribute {part!r}{_closest(part, names)}")
        obj = getattr(obj, part)
    return obj


def _from_file(file: str, attr: str, spec: str) -> Any:
    path = Path(file)
    if not path.is_file():
        raise CLIError(f"no Python file at {file} (from SPEC {spec!r}); give path/to/file.py:callable")
    # the file's folder goes first on the path, so that it can import its neighbours as it would
    # when run as a script
    sys.path.insert(0, str(path.resolve().parent))
    name = f"_featcheck_spec_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise CLIError(f"{file} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        raise CLIError(f"importing {file} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return _attribute(module, attr, file)


def _from_module(module_name: str, attr: str, spec: str) -> Any:
    # like `python -m`, the current folder is importable
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(
                f"no module named {module_name!r} (from SPEC {spec!r}): give package.module:callable "
                "importable from here, path/to/file.py:callable, torchvision:NAME or timm:NAME"
            ) from None
        raise CLIError(f"importing {module_name} failed: ModuleNotFoundError: {exc}") from None
    except Exception as exc:
        raise CLIError(f"importing {module_name} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return _attribute(module, attr, module_name)


def _pickled(path: Path, trust_pickle: bool) -> Loaded:
    if not path.is_file():
        raise CLIError(f"no model file at {path}")
    if not trust_pickle:
        raise CLIError(
            f"{path} would be unpickled, and unpickling runs whatever code the file names: pass "
            "--trust-pickle if you trust it, or give the model's code as SPEC and the file as --weights FILE"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CLIError(f"{path} cannot be loaded with torch.load: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(obj, nn.Module):
        hint = " (a state dict: give the model's code as SPEC and this file as --weights FILE)" if isinstance(obj, dict) else ""
        raise CLIError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module{hint}")
    return Loaded(obj, str(path), "unpickled with --trust-pickle")


def load_model(spec: str, kwargs: dict[str, Any], weights: str | None, trust_pickle: bool) -> Loaded:
    """Build the model ``spec`` names, then load ``weights`` into it.

    Raises:
        CLIError: for every mistake in the spec, the arguments or the files, in one line.
    """
    torch.manual_seed(SEED)
    source, sep, attr = spec.rpartition(":")
    if not sep:
        path = Path(spec)
        if path.suffix in _PICKLE_SUFFIXES:
            if kwargs:
                raise CLIError("--arg is for a callable; a pickled model is loaded as it is")
            loaded = _pickled(path, trust_pickle)
        else:
            raise CLIError(
                f"SPEC must be torchvision:NAME, timm:NAME, package.module:callable, "
                f"path/to/file.py:callable or a pickled model.pt, got {spec!r}"
            )
    elif not source or not attr:
        raise CLIError(f"SPEC {spec!r} has an empty side of ':'; give package.module:callable or torchvision:NAME")
    elif source == "torchvision":
        loaded = _torchvision(attr, spec, kwargs)
    elif source == "timm":
        loaded = _timm(attr, spec, kwargs)
    else:
        if source.endswith(".py"):
            build = _from_file(source, attr, spec)
        else:
            build = _from_module(source, attr, spec)
        if not callable(build):
            raise CLIError(f"{spec} is a {type(build).__name__}, not a callable that builds a model")
        model = build if isinstance(build, nn.Module) else _call(build, spec, kwargs)
        if not isinstance(model, nn.Module):
            raise CLIError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
        loaded = Loaded(model, spec, "")
    if weights is not None:
        _load_weights(loaded, weights)
    return loaded


def _load_safely(file: str, option: str, missing: str = "", expected: str = "") -> Any:
    """``torch.load(file, weights_only=True)`` for ``option``, or a CLIError: ``missing`` says what
    to give instead of a missing file, ``expected`` what the file should hold."""
    path = Path(file)
    if not path.is_file():
        raise CLIError(f"{option}: no file at {file}{missing}")
    found = _not_torch_save(path)
    if found:
        raise CLIError(f"{option} {file} is {found}, not a file written by torch.save{expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(
            f"{option} {file} cannot be loaded with torch.load(weights_only=True){expected}: {_load_problem(exc)}"
        ) from None


# the first bytes of files people pass by mistake
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a numpy .npy file"), (b"\x89HDF", "an HDF5 file"))


def _not_torch_save(path: Path) -> str:
    """What ``path`` holds if it cannot be a torch.save file (a zip archive since torch 1.6, a
    pickle before), else ''."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc})"
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return ""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (or a character cut at byte 512: then it is not called text)
        text = ""
    if text and "".join(text.split()).isprintable():
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"text (starting {first[:40]!r})" if first else "blank text"
    return f"binary data (starting {head[:4].hex(' ')}; neither a zip archive nor a pickle)"


def _load_problem(exc: BaseException) -> str:
    """What ``torch.load`` found wrong, in one line: for ``weights_only`` refusals the line that
    names the object (torch's first lines only say that it refused and how to load unsafely)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = [" ".join(p.split()) for p in text.split(marker, 1)[1].split("\n\n")]
        detail = next((p for p in after if p), "").split(". ")[0].rstrip(".")
        return f"it holds something other than tensors and plain containers ({detail or 'no detail given'})"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _load_weights(loaded: Loaded, file: str) -> None:
    state = _load_safely(
        file, "--weights",
        expected=" (a state dict of tensors is expected; a pickled whole model is SPEC with --trust-pickle)",
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"--weights {file} holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    missing, unexpected = _key_mismatch(loaded.model, state)
    if missing or unexpected:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise CLIError(f"--weights {file} does not fit {type(loaded.model).__name__}: {'; '.join(parts)}")
    try:
        loaded.model.load_state_dict(state)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), _first_line(exc))
        raise CLIError(f"--weights {file} does not fit {type(loaded.model).__name__}: {detail}") from None
    loaded.weights = f"weights from {file}"


def _key_mismatch(model: nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    want = set(model.state_dict())
    return sorted(want - set(state)), sorted(set(state) - want)


# -- inputs ---------------------------------------------------------------------------------------


@dataclass
class ModelInput:
    """The batch the capture runs, and how to make more like it for calibration."""

    tensor: torch.Tensor
    description: str
    kind: str  # "shape", "image", "file", "tokens"
    vocab: int = 0

    def batches(self, n: int) -> list[torch.Tensor]:
        """``n`` random batches of this input's shape for BatchNorm calibration, drawn with seeds
        1..n (the capture's own input uses seed 0)."""
        from ._inputs import sample_input

        shape = tuple(self.tensor.shape)
        if self.kind == "tokens":
            return [_token_ids(shape, self.vocab, seed) for seed in range(1, n + 1)]
        return [_allocated(functools.partial(sample_input, shape, seed=seed), shape, torch.float32, "--calibrate: a batch of")
                for seed in range(1, n + 1)]


def _token_ids(shape: tuple[int, ...], vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _allocated(lambda: torch.randint(0, vocab, shape, generator=g), shape, torch.int64, "--tokens")


# what the allocator's refusals say: torch's CPU and CUDA allocators, its size arithmetic, numpy
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "overflow", "cannot allocate")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def _allocated(make: Any, shape: tuple[int, ...], dtype: torch.dtype, option: str) -> torch.Tensor:
    """``make()``, a new tensor of ``shape`` and ``dtype`` for ``option``; memory it cannot get is
    a CLIError saying how much was asked, not a traceback from torch's allocator."""
    values = math.prod(shape)
    size = values * dtype.itemsize
    too_big = CLIError(
        f"{option} {'x'.join(map(str, shape))} is {values:,} values of {str(dtype).removeprefix('torch.')}, "
        f"{size:,} bytes ({_gib(size)}): more memory than this machine can give; give a smaller shape "
        "(a smaller batch or smaller sizes)"
    )
    if size >= 2**63:  # more than any allocator can even be asked for
        raise too_big
    try:
        return make()
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or any(s in str(exc).lower() for s in _ALLOCATION_FAILURES):
            raise too_big from None
        raise


def make_input(
    model: nn.Module, shape_or_file: str | None, images: Sequence[str], tokens: str | None, image_size: int
) -> ModelInput:
    """The model input from exactly one of ``--input``, ``--image`` and ``--tokens``."""
    given = [flag for flag, value in (("--input", shape_or_file), ("--image", images), ("--tokens", tokens)) if value]
    if len(given) != 1:
        found = "none" if not given else " and ".join(given)
        raise CLIError(
            f"give the model one input: --input 2x3x224x224 (random), --input batch.pt, --image "
            f"photo.jpg ... or --tokens 16; found {found}"
        )
    if images:
        return _images(images, image_size)
    if tokens:
        return _tokens(model, tokens)
    assert shape_or_file is not None
    if shape_or_file.endswith(_PICKLE_SUFFIXES) or Path(shape_or_file).is_file():
        return _tensor_file(shape_or_file)
    from ._inputs import sample_input

    shape = parse_shape(shape_or_file, "--input")
    x = _allocated(lambda: sample_input(shape), shape, torch.float32, "--input")
    return ModelInput(x, f"{shape_or_file} (normal, seed {SEED})", "shape")


def _images(files: Sequence[str], size: int) -> ModelInput:
    from ._render._images import load_image

    if size < 1:
        raise CLIError(f"--image-size must be a positive number of pixels, got {size}")
    batch = []
    for file in files:
        try:
            batch.append(load_image(file, size=size))
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(f"--image: {exc}") from None
    x = torch.cat(batch)
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} images)" if len(files) > 3 else "")
    return ModelInput(x, f"{'x'.join(map(str, x.shape))} from {shown} (ImageNet-normalised)", "image")


def _tensor_file(file: str) -> ModelInput:
    x = _load_safely(file, "--input", missing="; give a shape such as 2x3x224x224 or a .pt file holding a tensor",
                     expected=" (a tensor saved with torch.save is expected; images go to --image)")
    if not isinstance(x, torch.Tensor):
        raise CLIError(f"--input {file} holds a {type(x).__name__}, not a tensor")
    if x.numel() == 0:
        raise CLIError(f"--input {file} holds an empty tensor of shape {tuple(x.shape)}")
    return ModelInput(x, f"{'x'.join(map(str, x.shape))} {x.dtype} from {file}", "file")


def _tokens(model: nn.Module, text: str) -> ModelInput:
    shape = parse_shape(text, "--tokens", "16 or 2x16", "LENGTH or BATCHxLENGTH")
    if len(shape) == 1:
        shape = (2, shape[0])
    if len(shape) != 2:
        raise CLIError(f"--tokens must be LENGTH or BATCHxLENGTH (16 or 2x16), got {text!r}")
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        raise CLIError(
            f"--tokens needs an nn.Embedding in {type(model).__name__} to know the range of ids; it has "
            "none: give --input SHAPE or a .pt tensor instead"
        )
    vocab = embedding.num_embeddings
    x = _token_ids(shape, vocab, SEED)
    return ModelInput(x, f"{shape[0]}x{shape[1]} random token ids in [0, {vocab}) (seed {SEED})", "tokens", vocab)
