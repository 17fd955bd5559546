"""Pretrained weights by name: the registry folder `SAGE_WEIGHTS_DIR` (torch-free, so the web process
can validate a name before it queues a run).

The folder holds weight files under torchvision's own file names (`resnet18-f37072fd.pth`: the
stem, a dash, the first hex digits of the file's SHA-256, as `torch.hub` checks them), so a file is
verified by its name alone. torchvision's weights are known by their enum names
(`ResNet18_Weights.IMAGENET1K_V1`, see `TORCHVISION_WEIGHTS`); other files (weights you trained
yourself) are added under a name of your choice with their backbone, kept in `registry.json`, and
stored under a torchvision-style name with their own hash. `sage-studio weights add FILE [--name N]`
and `sage-studio weights list` manage the folder; a training option `weights: "<name>"` uses it.
With `SAGE_ALLOW_DOWNLOAD=1` a known torchvision name whose file is missing is downloaded into the
folder (by torchvision, hash-checked) when a worker first needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# torchvision weights enum name -> (backbone in sage.backbones, file name torchvision downloads).
# tests/ml/test_weights.py checks every entry against torchvision's own enums.
TORCHVISION_WEIGHTS: dict[str, tuple[str, str]] = {
    "ResNet18_Weights.IMAGENET1K_V1": ("resnet18", "resnet18-f37072fd.pth"),
    "ResNet50_Weights.IMAGENET1K_V1": ("resnet50", "resnet50-0676ba61.pth"),
    "ResNet50_Weights.IMAGENET1K_V2": ("resnet50", "resnet50-11ad3fa6.pth"),
    "DenseNet121_Weights.IMAGENET1K_V1": ("densenet121", "densenet121-a639ec97.pth"),
    "EfficientNet_B0_Weights.IMAGENET1K_V1": ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth"),
    "ConvNeXt_Tiny_Weights.IMAGENET1K_V1": ("convnext_tiny", "convnext_tiny-983f1562.pth"),
    "ViT_B_16_Weights.IMAGENET1K_V1": ("vit_b_16", "vit_b_16-c867db91.pth"),
}
DOWNLOAD_URL = "https://download.pytorch.org/models/"
HASHED_NAME = re.compile(r"^(?P<stem>[A-Za-z0-9_.]+)-(?P<hash>[0-9a-f]{8,64})\.(pth|pt)$")
CUSTOM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
REGISTRY_FILE = "registry.json"


class WeightsError(ValueError):
    """A weights name or file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    backbone: str
    file: str  # file name inside the registry folder
    source: str  # "torchvision" or "custom"
    present: bool  # the file is in the folder (a torchvision one may be downloaded on first use)


def weights_dir() -> Path:
    """The registry folder: $SAGE_WEIGHTS_DIR, else $SAGE_DATA_DIR/weights, else ./data/weights."""
    given = os.environ.get("SAGE_WEIGHTS_DIR")
    if given:
        return Path(given)
    return Path(os.environ.get("SAGE_DATA_DIR") or "./data") / "weights"


def download_allowed() -> bool:
    return os.environ.get("SAGE_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path) -> None:
    """Check `path` against the hash prefix in its own name; raise WeightsError if it differs."""
    match = HASHED_NAME.match(path.name)
    if match is None:
        raise WeightsError(f"{path.name} has no hash in its name (expected NAME-<sha256 prefix>.pth)")
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; add it with `sage-studio weights add FILE`")
    actual = sha256_of(path)
    if not actual.startswith(match["hash"]):
        raise WeightsError(
            f"{path} is corrupt or not the file its name says: SHA-256 starts {actual[: len(match['hash'])]}, "
            f"the name says {match['hash']}; download it again and re-add it"
        )


def _custom(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is unreadable ({exc}); fix or remove it") from exc
    return data if isinstance(data, dict) else {}


def list_weights(folder: Path | None = None) -> list[WeightsEntry]:
    """The names a training run may use: torchvision ones whose file is present (or every known one
    when downloads are allowed) and the custom ones of registry.json."""
    folder = folder or weights_dir()
    out = []
    for name, (backbone, file) in TORCHVISION_WEIGHTS.items():
        present = (folder / file).is_file()
        if present or download_allowed():
            out.append(WeightsEntry(name, backbone, file, "torchvision", present))
    for name, item in sorted(_custom(folder).items()):
        out.append(
            WeightsEntry(name, item["backbone"], item["file"], "custom", (folder / item["file"]).is_file())
        )
    return out


def resolve(name: str, backbone: str | None = None, folder: Path | None = None) -> WeightsEntry:
    """The entry for `name`, checked against `backbone`; raises WeightsError naming what is known.
    Does not read the file (see `weights_path`)."""
    folder = folder or weights_dir()
    entries = {e.name: e for e in list_weights(folder)}
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(entries) or f"none registered in {folder}"
        hint = (
            " (a torchvision name whose file is not in the folder yet)" if name in TORCHVISION_WEIGHTS else ""
        )
        raise WeightsError(
            f"unknown weights {name!r}{hint}; registered: {known}. Add a file with `sage-studio weights add FILE`"
        )
    if backbone is not None and entry.backbone != backbone:
        raise WeightsError(f"weights {name!r} are for backbone {entry.backbone!r}, not {backbone!r}")
    return entry


def weights_path(
    name: str,
    backbone: str | None = None,
    folder: Path | None = None,
    download: Callable[[str, Path, str], None] | None = None,
) -> Path:
    """The verified local file of `name`. A torchvision file missing from the folder is fetched first
    with `download(url, folder, file_name)` when one is given and `SAGE_ALLOW_DOWNLOAD` is set (train
    workers pass `sage.training.hub_download`; this module never imports torch)."""
    folder = folder or weights_dir()
    entry = resolve(name, backbone, folder)
    path = folder / entry.file
    if not path.is_file() and entry.source == "torchvision" and download is not None and download_allowed():
        folder.mkdir(parents=True, exist_ok=True)
        download(DOWNLOAD_URL + entry.file, folder, entry.file)
    verify_file(path)
    return path


def add_weights(
    source: Path, name: str | None = None, backbone: str | None = None, folder: Path | None = None
) -> WeightsEntry:
    """Copy `source` into the registry folder and return its entry.

    name None: `source` must carry a torchvision file name (resnet18-f37072fd.pth). A torchvision
    name: the file must be that one (hash prefix checked). Any other name: custom weights for
    `backbone` (default: the stem of a torchvision-style source name), stored as
    `<backbone>-<sha256[:8]>.pth`.
    """
    from sage.config import BACKBONES

    folder = folder or weights_dir()
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"{source}: no such file")
    by_file = {file: n for n, (_, file) in TORCHVISION_WEIGHTS.items()}
    if name is None:
        name = by_file.get(source.name)
        if name is None:
            raise WeightsError(
                f"{source.name} is not a torchvision weights file name; give --name (a torchvision name such as "
                f"ResNet18_Weights.IMAGENET1K_V1, or your own name with --backbone)"
            )
    digest = sha256_of(source)
    folder.mkdir(parents=True, exist_ok=True)
    if name in TORCHVISION_WEIGHTS:
        expected_backbone, file = TORCHVISION_WEIGHTS[name]
        matched = HASHED_NAME.match(file)
        assert matched is not None  # every TORCHVISION_WEIGHTS file name carries its hash
        expected = matched["hash"]
        if not digest.startswith(expected):
            raise WeightsError(
                f"{source} is not torchvision's {name}: SHA-256 starts {digest[: len(expected)]}, expected {expected}"
            )
        if backbone is not None and backbone != expected_backbone:
            raise WeightsError(f"{name} is for backbone {expected_backbone!r}, not {backbone!r}")
        _copy(source, folder / file)
        return WeightsEntry(name, expected_backbone, file, "torchvision", True)
    if not CUSTOM_NAME.match(name):
        raise WeightsError(f"weights name {name!r}: use letters, digits and _ . : - (at most 80 characters)")
    if backbone is None:
        match = HASHED_NAME.match(source.name)
        stem = match["stem"] if match else source.stem
        backbone = next((b for b in BACKBONES if stem == b or stem.startswith(b + "_")), None)
        if backbone is None:
            raise WeightsError(
                f"cannot tell the backbone of {source.name}; give --backbone ({', '.join(BACKBONES)})"
            )
    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    file = f"{backbone}-{digest[:8]}.pth"
    _copy(source, folder / file)
    register_custom(folder, name, backbone, file, digest)
    return WeightsEntry(name, backbone, file, "custom", True)


def register_custom(folder: Path, name: str, backbone: str, file: str, digest: str) -> None:
    """Record custom weights `name` (file `file` in `folder`) in the folder's registry.json."""
    registry = _custom(folder)
    registry[name] = {"backbone": backbone, "file": file, "sha256": digest}
    tmp = folder / (REGISTRY_FILE + ".tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True))
    os.replace(tmp, folder / REGISTRY_FILE)


def _copy(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def as_dicts(entries: list[WeightsEntry]) -> list[dict]:
    return [asdict(e) for e in entries]
