"""IQA rewards: a registry over pyiqa, oriented once so that higher is better.

    reward = create_reward("niqe")                 # -NIQE
    reward = create_reward("niqe + 0.02*piqe")     # -(NIQE) - 0.02 PIQE
    reward = create_reward("psnr")                 # full-reference: reward(img, ref=gt)
    reward(images)                                 # (B,) tensor, higher is better

Composite syntax: terms joined by ``+`` (or ``-``, which negates the weight);
a term is ``NAME``, ``W*NAME`` or ``NAME*W`` with W a number. The weight
multiplies the *oriented* score: every metric is first turned so that
higher is better (``-score`` where pyiqa says ``lower_better``), so a
positive weight always means "more of this quality". With
``normalize=True`` each oriented score is mapped to about [0, 1] with the
ranges of ``NORM_RANGES`` (ours, chosen from typical values on natural
images) or, for other metrics, pyiqa's documented ``score_range``.

Offline. NIQE uses the official pristine-model parameters of Mittal et al.
and BRISQUE the official LIVE support-vector model of Mittal et al. (both
shipped in ``assets/``, see its README), so neither downloads. Metrics that
need network weights (MUSIQ, CLIPIQA, Q-Align, LPIPS, ...)
load from the pyiqa / torch-hub / Hugging Face caches when the files are
there; otherwise construction fails at once with ``MissingWeightsError``
naming the file and how to fetch it. While a metric is built, every network
connection is refused, so nothing can hang on the network.

Metric objects are built once per (name, device) and reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

__all__ = [
    "FACTS",
    "MetricFacts",
    "NORM_RANGES",
    "Metric",
    "MissingWeightsError",
    "Reward",
    "RELIABLE_SIDE",
    "ScoreMeta",
    "create_reward",
    "get_metric",
    "list_metrics",
    "parse_spec",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
NIQE_PARAMS = ASSETS / "niqe_pris_params.mat"
BRISQUE_PARAMS = ASSETS / "brisque_live_svm.pt"
@dataclass(frozen=True)
class MetricFacts:
    """What DARL knows about one metric beyond what pyiqa says (pyiqa gives its direction and whether it
    needs a reference). One record per metric; the tables below are views of ``FACTS``."""

    min_side: int = 1  # the smallest image side it accepts
    reliable_side: int | None = None  # the side from which its score means something (None: any it accepts)
    norm_range: tuple[float, float] | None = None  # (lo, hi) of the raw score for normalize=True [ours]
    serial_on_cpu: bool = False  # scores faster one image at a time than as a batch on a CPU (bench/rewards.py)
    differentiable: bool = False  # its score has a gradient in the pixels (reward backpropagation)
    offline: bool = False  # works here with no download: no weights, or parameters we ship
    shipped_params: Path | None = None  # the parameter file we ship (pyiqa's pretrained_model_path)
    own: str = ""  # a metric of this project, not pyiqa's: what it is


FACTS: dict[str, MetricFacts] = {
    "psnr": MetricFacts(norm_range=(15.0, 40.0), differentiable=True, offline=True),
    "ssim": MetricFacts(min_side=11, norm_range=(0.0, 1.0), offline=True),
    # NIQE's natural-scene statistics need 192 px a side to mean something; 2 cores score NIQE and PIQE
    # faster one image at a time (batched/serial throughput 0.86 and 0.85, 16 images of 256 px)
    "niqe": MetricFacts(min_side=96, reliable_side=192, norm_range=(2.0, 12.0), serial_on_cpu=True, offline=True,
                        shipped_params=NIQE_PARAMS),
    "niqe_matlab": MetricFacts(min_side=96, reliable_side=192, offline=True),
    "ilniqe": MetricFacts(min_side=96, reliable_side=192),
    "piqe": MetricFacts(min_side=16, norm_range=(0.0, 100.0), serial_on_cpu=True, offline=True),
    "brisque": MetricFacts(min_side=32, norm_range=(0.0, 100.0), offline=True, shipped_params=BRISQUE_PARAMS),
    **{name: MetricFacts(offline=True) for name in ("ms_ssim", "gmsd", "vif", "fsim", "cw_ssim", "nlpd", "mad",
                                                    "vsi")},
    "lpips": MetricFacts(norm_range=(0.0, 1.0)),
    "musiq": MetricFacts(norm_range=(0.0, 100.0)),
    "clipiqa": MetricFacts(norm_range=(0.0, 1.0)),
    "qalign": MetricFacts(norm_range=(1.0, 5.0)),
    "topiq_nr": MetricFacts(norm_range=(0.0, 1.0)),
    "maniqa": MetricFacts(norm_range=(0.0, 1.0)),
    "darl_iqa": MetricFacts(min_side=32, norm_range=(10.0, 60.0), differentiable=True, offline=True,
                            own="the learned no-reference IQA network this project trains (darl_core.rewards.iqa, "
                                "models/darl-iqa)"),
    "texture_match": MetricFacts(differentiable=True, offline=True,
                                 own="full-reference: fine texture matched to the reference's block by block "
                                     "(evalset.texture_match)"),
}

# Views of FACTS, by the names the rest of the code reads.
SHIPPED_PARAMS = {n: f.shipped_params for n, f in FACTS.items() if f.shipped_params}
MIN_SIDE = {n: f.min_side for n, f in FACTS.items() if f.min_side > 1}
RELIABLE_SIDE = {n: f.reliable_side for n, f in FACTS.items() if f.reliable_side}
NORM_RANGES = {n: f.norm_range for n, f in FACTS.items() if f.norm_range}
SERIAL_ON_CPU = {n for n, f in FACTS.items() if f.serial_on_cpu}
DIFFERENTIABLE = frozenset(n for n, f in FACTS.items() if f.differentiable)
OFFLINE = tuple(n for n, f in FACTS.items() if f.offline and not f.own)  # pyiqa's, with no download
OWN = {n: f.own for n, f in FACTS.items() if f.own}


class MissingWeightsError(RuntimeError):
    """A learned metric's weights are not cached and the network may not be used."""


@dataclass(frozen=True)
class ScoreMeta:
    """What a cached score depends on: the store keys its cache on this."""

    metric: str  # pyiqa metric name
    pyiqa_version: str  # version of the package that computed it
    params_hash: str  # sha1 of the metric options (and parameter file), 12 hex digits

    def as_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "pyiqa_version": self.pyiqa_version, "params_hash": self.params_hash}


_build_lock = threading.Lock()


@contextlib.contextmanager
def _no_network(metric: str) -> Iterator[None]:
    """Refuse downloads and connections of the building thread while a metric is built (fail fast,
    never hang); other threads are not affected."""
    import huggingface_hub.constants as hfc
    import pyiqa.utils.download_util as pdl
    import torch.hub as th

    def refuse_download(url: str, dst: str, *a: object, **k: object) -> None:
        raise MissingWeightsError(
            f"metric {metric!r} needs {Path(dst).name}, which is not in the cache ({Path(dst).parent}). "
            f"On a connected machine run: python -c \"import pyiqa; pyiqa.create_metric('{metric}')\" "
            f"(or download {url} into {Path(dst).parent}), then copy that folder here.")

    builder = threading.get_ident()
    real_connect = socket.socket.connect
    real_pdl, real_th = pdl.download_url_to_file, th.download_url_to_file

    # Only the thread that builds the metric is refused: the app's other threads (requests, the
    # store's connections) keep their network while a metric is built.
    def guarded(real: object, refuse: object) -> object:
        def f(*a: object, **k: object) -> object:
            return (refuse if threading.get_ident() == builder else real)(*a, **k)  # type: ignore[operator]
        return f

    def refuse_connect(self: socket.socket, *a: object) -> None:
        raise MissingWeightsError(
            f"metric {metric!r} tried to reach the network for weights that are not cached "
            f"(pyiqa cache: {pdl.DEFAULT_CACHE_DIR}; Hugging Face cache: {hfc.HF_HUB_CACHE}). "
            f"Build it once on a connected machine (python -c \"import pyiqa; pyiqa.create_metric('{metric}')\") "
            f"and copy the caches here.")

    saved = (pdl.download_url_to_file, th.download_url_to_file, socket.socket.connect, hfc.HF_HUB_OFFLINE,
             os.environ.get("HF_HUB_OFFLINE"))
    with _build_lock:
        pdl.download_url_to_file = guarded(real_pdl, refuse_download)
        th.download_url_to_file = guarded(real_th, refuse_download)
        socket.socket.connect = guarded(real_connect, refuse_connect)  # type: ignore[method-assign]
        hfc.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            yield
        finally:
            pdl.download_url_to_file, th.download_url_to_file, socket.socket.connect, hfc.HF_HUB_OFFLINE = saved[:4]
            if saved[4] is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved[4]


def list_metrics() -> list[str]:
    """Every metric name pyiqa knows (learned ones need cached weights), plus this project's own."""
    import pyiqa

    return sorted(set(pyiqa.list_models()) | set(OWN))


class Metric:
    """One pyiqa metric, built once; ``__call__`` returns raw scores (B,)."""

    def __init__(self, name: str, device: str | torch.device = "cpu") -> None:
        import pyiqa
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        if name in OWN:
            self._init_own(name, device)
            return
        if name not in DEFAULT_CONFIGS:
            raise ValueError(f"unknown metric {name!r}; see darl_core.rewards.registry.list_metrics()")
        opts: dict[str, object] = {}
        if name in SHIPPED_PARAMS:
            opts["pretrained_model_path"] = str(SHIPPED_PARAMS[name])
        self.name = name
        self.device = torch.device(device)
        with _no_network(name):
            try:
                self.net = pyiqa.create_metric(name, device=self.device, **opts)
            except MissingWeightsError:
                raise
            except (OSError, ValueError) as e:
                # transformers / timm report a refused or offline download as OSError/ValueError
                raise MissingWeightsError(f"metric {name!r} could not load its weights offline: {e}") from e
        self.lower_better = bool(self.net.lower_better)
        self.full_reference = self.net.metric_mode == "FR"
        self.min_side = MIN_SIDE.get(name, 1)
        cfg = dict(DEFAULT_CONFIGS[name]["metric_opts"], **opts)
        if name in SHIPPED_PARAMS:
            cfg["pretrained_model_path"] = hashlib.sha1(SHIPPED_PARAMS[name].read_bytes()).hexdigest()
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.meta = ScoreMeta(name, pyiqa.__version__, digest)
        rng = DEFAULT_CONFIGS[name].get("score_range")
        self.norm_range = NORM_RANGES.get(name) or _parse_range(rng)

    def _init_own(self, name: str, device: str | torch.device) -> None:
        """darl_iqa: the shipped weights (DARL_IQA_DIR overrides the folder); texture_match: a formula. Both
        higher is better."""
        if name == "texture_match":
            from ..evaluation.evalset import texture_match

            self.name, self.device, self.net = name, torch.device(device), texture_match
            self.lower_better, self.full_reference, self.min_side = False, True, 16
            self.meta = ScoreMeta(name, "darl", "block8-sigma1.5")
            self.norm_range = (-3.0, 0.0)
            return
        from .iqa import DEFAULT_DIR, load_iqa

        folder = Path(os.environ.get("DARL_IQA_DIR") or DEFAULT_DIR)
        try:
            self.net = load_iqa(folder, device)
        except FileNotFoundError as e:
            raise MissingWeightsError(str(e)) from e
        self.name = name
        self.device = torch.device(device)
        self.lower_better = False
        self.full_reference = False
        self.min_side = MIN_SIDE.get(name, 1)
        digest = hashlib.sha1((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
        self.meta = ScoreMeta(name, "darl_iqa", digest)
        self.norm_range = NORM_RANGES[name]

    def check_size(self, x: torch.Tensor) -> None:
        side = min(x.shape[-2:])
        if side < self.min_side:
            raise ValueError(f"{self.name} needs images at least {self.min_side} px a side, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        if side < RELIABLE_SIDE.get(self.name, 0):
            warnings.warn(f"{self.name} is unreliable below {RELIABLE_SIDE[self.name]} px a side "
                          f"(got {side})", stacklevel=3)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores of a (B, 3, H, W) batch in [0, 1] (``ref`` for full-reference metrics)."""
        if x.ndim == 3:
            x = x[None]
        self.check_size(x)
        try:
            return self._score(x, ref)
        except torch.linalg.LinAlgError:  # NIQE fits a Gaussian to local statistics: none on a flat image
            raise ValueError(f"{self.name} is undefined on this image: it has no texture to measure "
                             f"(a uniform or nearly uniform image)") from None

    def _score(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        if self.full_reference:
            if ref is None:
                raise ValueError(f"{self.name} is a full-reference metric: pass ref= (the ground truth)")
            if ref.ndim == 3:
                ref = ref[None]
            if ref.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"{self.name}: image {tuple(x.shape[-2:])} and reference "
                                 f"{tuple(ref.shape[-2:])} differ in size")
            out = self.net(x.float().clamp(0, 1).to(self.device), ref.float().clamp(0, 1).to(self.device))
        else:
            x = x.float().clamp(0, 1).to(self.device)
            if self.device.type == "cpu" and self.name in SERIAL_ON_CPU:
                out = torch.cat([self.net(x[i : i + 1]).reshape(-1) for i in range(x.shape[0])])
            else:
                out = self.net(x)
        return out.reshape(-1).float().cpu()

    def score_with_grad(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores with the gradient kept (``DIFFERENTIABLE`` metrics; the clamp to [0, 1] passes it inside)."""
        if x.ndim == 3:
            x = x[None]
        self.check_size(x)
        if self.name == "psnr":  # 10 log10(1 / MSE), on the image as it is (pyiqa's converts to uint8 levels first)
            mse = (x.float() - ref.float().to(x.device)).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
            return (-10 * torch.log10(mse)).reshape(-1)
        return self._score(x, ref)

    def oriented(self, raw: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Raw scores turned so that higher is better (and mapped to ~[0, 1] if ``normalize``)."""
        if normalize:
            lo, hi = self.norm_range
            z = (raw - lo) / (hi - lo)
            return 1 - z if self.lower_better else z
        return -raw if self.lower_better else raw


def _parse_range(text: str | None) -> tuple[float, float]:
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text or "")]
    return (nums[0], nums[1]) if len(nums) == 2 and nums[1] > nums[0] else (0.0, 1.0)


@cache
def _cached_metric(name: str, device: str) -> Metric:
    return Metric(name, device)


def get_metric(name: str, device: str | torch.device = "cpu") -> Metric:
    """The shared Metric object for ``name`` on ``device`` (built on first use). A metric whose code cannot be
    imported here (clipiqa needs ``pkg_resources``, say) is a MissingWeightsError naming what is missing."""
    try:
        return _cached_metric(name.strip().lower(), str(torch.device(device)))
    except ImportError as e:
        raise MissingWeightsError(f"metric {name.strip()!r} cannot be built here: it needs the module "
                                  f"{e.name or str(e)!r}, which is not installed (pip install it, or choose another "
                                  f"metric)") from None


_NUM = r"\d*\.?\d+(?:e[-+]?\d+)?"
_TERM = re.compile(rf"(?P<sign>[+-]?)(?:(?P<w1>{_NUM})\*)?(?:\[(?P<qname>[^\]]+)\]|(?P<name>[a-z][a-z0-9_]*))"
                   rf"(?:\*(?P<w2>[-+]?{_NUM}))?")


def parse_spec(spec: str) -> list[tuple[float, str]]:
    """``"niqe + 0.02*piqe"`` -> [(1.0, "niqe"), (0.02, "piqe")]; raises ValueError on bad syntax.

    Names holding ``-`` or ``+`` (``musiq-koniq``, ``clipiqa+``) go in brackets: ``[clipiqa+]``.
    """
    text = re.sub(r"\s*([+*-])\s*", r"\1", spec.strip().lower())
    if re.search(r"\s", text):
        raise ValueError(f"cannot parse reward spec {spec!r}: join terms with + or -")
    terms, pos = [], 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos or (pos > 0 and not m.group("sign")):
            raise ValueError(f"cannot parse reward spec {spec!r} at {text[pos:]!r}; "
                             f"write NAME, W*NAME or NAME*W joined by + or -")
        w = float(m.group("w1") or 1.0) * float(m.group("w2") or 1.0)
        terms.append((-w if m.group("sign") == "-" else w, m.group("qname") or m.group("name")))
        pos = m.end()
    if not terms:
        raise ValueError("empty reward spec")
    return terms


class Reward:
    """A weighted sum of oriented metrics; ``reward(images, ref)`` -> (B,) higher is better."""

    def __init__(self, spec: str, device: str | torch.device = "cpu", normalize: bool = False) -> None:
        self.spec = spec
        self.normalize = normalize
        self.terms = [(w, get_metric(name, device)) for w, name in parse_spec(spec)]
        self.full_reference = any(m.full_reference for _, m in self.terms)
        self.min_side = max(m.min_side for _, m in self.terms)

    @property
    def metric_names(self) -> list[str]:
        return [m.name for _, m in self.terms]

    def raw(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw score of every term's metric."""
        return {m.name: m(x, ref) for _, m in self.terms}

    def from_raw(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * m.oriented(raw[m.name], self.normalize) for w, m in self.terms)

    def with_grad(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """The reward with its gradient with respect to ``x`` (reward backpropagation); only for terms whose
        score is a differentiable function of the pixels (``DIFFERENTIABLE``), else a ValueError naming them."""
        bad = [m.name for _, m in self.terms if m.name not in DIFFERENTIABLE]
        if bad:
            raise ValueError(f"reward terms {bad} have no gradient to backpropagate; use {sorted(DIFFERENTIABLE)}")
        return self.from_raw({m.name: m.score_with_grad(x, ref) for _, m in self.terms})

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_raw(self.raw(x, ref))


def create_reward(spec: str, device: str | torch.device = "cpu", normalize: bool = False) -> Reward:
    """Resolve a reward spec (one metric or a weighted composite) to a Reward."""
    return Reward(spec, device, normalize)
