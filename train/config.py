"""Model and training configuration: the one home of defaults.

A ``ModelConfig`` is the constructor's arguments; it round-trips through JSON and travels inside every
checkpoint (``config.json``) so later stages never need the training command line.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from simpleunet_runtime.errors import SimpleUNetError

FAMILIES = ("simpleunet", "simpleesknet", "unet")
HEADS = ("paper", "logits")
AUGMENTS = ("none", "light", "strong", "heavy")
#: How a run draws its validation carve-out (``carve_by``): ``random`` (every run before 2026-12-07), or
#: ``lesion-area``: the fraction drawn from each lesion-size bin (data.AREA_EDGES), so the carve-out holds the
#: training images' mix of small, large and empty masks. Why: Kvasir-SEG's seed-0 random carve-out drew none of
#: train_880's 65 polyps under 3 % of the image (a 1-in-1,200 draw), which the test split has 12 of and scores
#: lowest on, so no screen could see them.
CARVE_BY = ("random", "lesion-area")
#: ``bce_dice``: BCE + soft Dice (CE + Dice for 2+ classes). ``structure``: PraNet's boundary-weighted BCE +
#: weighted IoU (1 output channel only).
LOSSES = ("bce_dice", "structure")


class ConfigError(SimpleUNetError, ValueError):
    """A configuration value is invalid."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model (the authors' architecture; README "Models"). ``head``: ``paper`` = 1x1 conv + BN
    + ReLU on the logits (the authors' code), ``logits`` = 1x1 conv + BN with no ReLU (needed for a 1-class
    sigmoid head)."""

    family: str = "simpleunet"
    width: int = 16
    blocks: int = 1
    rate: float = 0.5
    kernel_size: int = 3
    dilation: int = 1
    aff: bool = True
    in_channels: int = 3
    num_classes: int = 1
    head: str = "logits"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        for name in ("width", "blocks", "in_channels", "num_classes", "kernel_size", "dilation"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {self.kernel_size}")
        if not (0 < float(self.rate) <= 1):
            raise ConfigError(f"selection rate R must be in (0, 1], got {self.rate!r}")
        if self.family != "unet" and int(self.rate * self.width) < 1:
            raise ConfigError(f"R*width must be >= 1 channel, got R={self.rate} width={self.width}")
        if self.head == "paper" and self.num_classes == 1:
            raise ConfigError("head 'paper' ends in a ReLU, which breaks a 1-class sigmoid output; "
                              "use head='logits' or num_classes=2")

    @property
    def name(self) -> str:
        """Short human name, e.g. ``simpleunet16`` or ``simpleesknet32-n2``."""
        suffix = f"-n{self.blocks}" if self.blocks != 1 else ""
        return f"{self.family}{self.width}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


#: The small-region rule (``simpleunet_runtime.regions.MinRegion``: drop regions under this fraction of the input,
#: or under this fraction of the largest region) that training writes into the checkpoints of these datasets'
#: models, after the threshold: one rule for the six zoo models, chosen on their training carve-outs together
#: (``python -m simpleunet.train.screen regions``, 2026-12-06). Other datasets keep every region, since many small
#: structures (cells, nuclei) are just what such a rule would remove.
MIN_REGION = {"kvasir-seg": (0.003, 0.3), "busi": (0.003, 0.3)}


@dataclass
class TrainConfig:
    """One training run. Defaults are the usual recipe for this model family (EGE-UNet/LB-UNet configs)."""

    dataset: str = "kvasir-seg"
    data_root: str | None = None
    imgsz: int = 256
    epochs: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    eta_min: float = 1e-5
    val_fraction: float = 0.1
    #: How the carve-out is drawn (CARVE_BY): at random, or the fraction from each lesion-size bin.
    carve_by: str = "random"
    seed: int = 0
    workers: int = 0
    amp: bool = True
    patience: int = 0
    augment: str = "strong"
    threads: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: A checkpoint folder whose weights the run starts from (a fine-tune), and their sha256, filled in by training.
    init: str | None = None
    init_sha256: str | None = None
    #: Quantization-aware fine-tuning through the int8 graph (train/qat.py); needs ``init``.
    qat: bool = False
    #: The int8 weight grid QAT trains through (train/qat.GRIDS): the exporter's default, int7. A config written
    #: before the field (QAT runs before 2026-12-03) trained through full-range int8 and reads as "int8".
    qat_weights: str = "int7"
    #: Weight of the QAT agreement term (train/qat.agreement_loss): the fp32 view is trained on the task too and the
    #: two views towards each other, so the int8 file's masks stay on the fp32 file's. 0: the int8 view alone.
    qat_agreement: float = 0.0
    #: The training loss (LOSSES).
    loss: str = "bce_dice"
    #: Decay of an exponential moving average of the weights (0: off). When on, validation, the best checkpoint and
    #: the export use the averaged weights; the optimizer keeps training the raw ones.
    ema: float = 0.0
    #: Stochastic weight averaging (Izmailov et al. 2018): from this fraction of the schedule on (0: off; 0.75: the
    #: last quarter) the lr is held at ``swa_lr`` (0: the cosine goes on) and the weights at the end of each epoch
    #: are averaged with equal weight; the average's BatchNorm statistics are re-measured on the (unaugmented)
    #: training images, as test images are seen. Validation, the best checkpoint and the export use the average
    #: once it exists. Why: an average over a flat stretch of the loss generalizes better than its end point.
    swa: float = 0.0
    swa_lr: float = 0.0
    #: A run folder whose model teaches this one (knowledge distillation): ``distill_weight`` x BCE of the student's
    #: logits against the teacher's probabilities is added to the loss. The teacher must have trained on the same
    #: images with the same carve-out, or the carve-out would no longer be unseen. Its sha256 is filled in.
    teacher: str | None = None
    teacher_sha256: str | None = None
    distill_weight: float = 1.0
    #: Deep supervision: ``deep_supervision`` x the mean loss of side outputs on the decoder's three coarser levels
    #: (1/8, 1/4, 1/2 of the input; model.DeepSupervision, 1x1 convs upsampled to the mask) is added to the loss.
    #: The side heads exist in training only: the checkpoint and the export hold the unchanged model. 0: off.
    deep_supervision: float = 0.0
    #: Label smoothing of mask borders: the training masks blurred by a Gaussian of this sigma in px at the training
    #: size (data.smooth_borders), so the targets go from 1 to 0 across a border instead of jumping. 0: off.
    border_smooth: float = 0.0
    #: Training at a larger size than the model is used at: the training images resized to this many px (0: to
    #: ``imgsz``), the carve-out, the checkpoint, the export and every score at ``imgsz``. Why: a fully convolutional
    #: model can learn from finer detail than it is asked to see (a candidate from the polyp literature).
    train_imgsz: int = 0
    #: Which images the run trained on, filled in by training (data.training_samples): a split file's name,
    #: data.OFFICIAL_TRAIN or data.ALL_IMAGES. None: not recorded (runs from before the field).
    split_used: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"{name} must be {want}, got {getattr(self, name)!r}")

        for name, low in (("epochs", 1), ("batch_size", 1), ("imgsz", 16), ("seed", 0), ("workers", 0),
                          ("patience", 0), ("threads", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(name, f"an integer >= {low}")
        if self.imgsz % 16:
            raise ConfigError(f"imgsz must be a multiple of 16 (five levels), got {self.imgsz}; try "
                              f"{(self.imgsz // 16 + 1) * 16}")
        if not self.lr > 0:
            raise bad("lr", "> 0")
        if not 0 <= self.eta_min <= self.lr:
            raise bad("eta_min", f"between 0 and lr ({self.lr})")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", ">= 0")
        if not 0 < self.val_fraction < 1:  # 0 would pick the best epoch and threshold on training images
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}: the best epoch and "
                              "threshold are chosen on that carve-out of the training images")
        if self.carve_by not in CARVE_BY:
            raise bad("carve_by", f"one of {', '.join(CARVE_BY)}")
        if self.augment not in AUGMENTS:
            raise bad("augment", f"one of {', '.join(AUGMENTS)}")
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {', '.join(LOSSES)}")
        if self.loss == "structure" and self.model.num_classes != 1:
            raise ConfigError("loss 'structure' is for a 1-class sigmoid head; use loss bce_dice with num_classes 2+")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise bad("ema", "a decay in [0, 1) (0 = off; 0.999 is usual)")
        if not (isinstance(self.swa, (int, float)) and 0 <= self.swa < 1):
            raise bad("swa", "a fraction of the schedule in [0, 1) (0 = off; 0.75 averages the last quarter)")
        if not (isinstance(self.swa_lr, (int, float)) and 0 <= self.swa_lr <= self.lr):
            raise bad("swa_lr", f"between 0 (keep the cosine) and lr ({self.lr})")
        if self.swa_lr and not self.swa:
            raise ConfigError("swa_lr is the lr while SWA averages: give --swa too (e.g. --swa 0.75), or drop --swa-lr")
        if self.swa and int(self.swa * self.epochs) == 0:
            raise ConfigError(f"swa {self.swa} of {self.epochs} epochs leaves no epoch before the averaging; raise "
                              "--swa or train more epochs")
        if self.swa and (self.ema or self.qat or self.patience):
            raise ConfigError("swa keeps its own average of the weights from a set epoch: it does not combine with "
                              "ema, qat or patience; drop one")
        if not (isinstance(self.distill_weight, (int, float)) and 0 <= self.distill_weight < float("inf")):
            raise bad("distill_weight", "a number >= 0")
        if not (isinstance(self.deep_supervision, (int, float)) and 0 <= self.deep_supervision < float("inf")):
            raise bad("deep_supervision", "a number >= 0 (0 = off; 1 weighs the side outputs like the main one)")
        if self.deep_supervision and self.model.family not in ("simpleunet", "simpleesknet"):
            raise ConfigError(f"deep supervision supports the simpleunet and simpleesknet families, not "
                              f"{self.model.family}; train it without --deep-supervision")
        if self.deep_supervision and self.qat:
            raise ConfigError("deep supervision and qat do not combine (QAT fine-tunes the int8 view of a trained "
                              "model); drop --deep-supervision")
        if not (isinstance(self.train_imgsz, int) and not isinstance(self.train_imgsz, bool)
                and (self.train_imgsz == 0 or (self.train_imgsz >= 16 and self.train_imgsz % 16 == 0))):
            raise bad("train_imgsz", "0 (train at imgsz) or a multiple of 16 (five levels), e.g. 320")
        if self.train_imgsz and (self.qat or self.teacher):
            raise ConfigError("train_imgsz trains at another size than the model is used at; qat (int8 ranges) and a "
                              "teacher (trained at imgsz) need the same size: drop --train-imgsz")
        if not (isinstance(self.border_smooth, (int, float)) and 0 <= self.border_smooth <= self.training_size / 8):
            raise bad("border_smooth", f"a Gaussian sigma in px between 0 (off) and {self.training_size / 8:g} "
                      "(e.g. 2)")
        if self.border_smooth and self.model.num_classes != 1:
            raise ConfigError("border_smooth blurs a 1-class mask; a 2+ class model trains on class labels: drop "
                              "--border-smooth")
        if self.teacher and self.model.num_classes != 1:
            raise ConfigError("distillation (teacher) supports a 1-class sigmoid head only")
        if self.qat and not self.init:
            raise ConfigError("qat fine-tunes a trained model: give the run to start from with --init <run folder>")
        if not (isinstance(self.qat_agreement, (int, float)) and 0 <= self.qat_agreement < float("inf")):
            raise bad("qat_agreement", "a number >= 0")
        if self.qat_weights not in ("int7", "pair-safe", "int8"):
            raise bad("qat_weights", "one of int7, pair-safe, int8")
        if self.qat and self.model.family != "simpleunet":
            raise ConfigError(f"quantization-aware training supports the simpleunet family, not "
                              f"{self.model.family}; train it without --qat")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each (RGB), std > 0; got {self.mean} / {self.std}")

    @property
    def training_size(self) -> int:
        """The size the training images are resized to (``train_imgsz``, else ``imgsz``)."""
        return self.train_imgsz or self.imgsz

    def preprocess(self, threshold: float = 0.5) -> dict[str, Any]:
        """The ``preprocess`` block of a checkpoint's config.json: what every later stage feeds the model."""
        return {"imgsz": self.imgsz, "mean": list(self.mean), "std": list(self.std), "channel_order": "RGB",
                "threshold": threshold, "min_region": list(MIN_REGION.get(self.dataset, (0.0, 0.0)))}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def flat(self) -> dict[str, Any]:
        """Every setting as ``name -> value`` (``model.width``...), so two configs compare key by key (resume
        checks, model-card commands)."""
        d = self.to_dict()
        return {**{k: v for k, v in d.items() if k != "model"}, **{f"model.{k}": v for k, v in d["model"].items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        if "model" in data and isinstance(data["model"], dict):
            data["model"] = ModelConfig.from_dict(data["model"])
        if data.get("qat") and "qat_weights" not in data:
            data["qat_weights"] = "int8"  # recorded before the field: those runs trained through full-range int8
        try:
            for k in ("mean", "std"):
                if k in data:
                    data[k] = tuple(float(v) for v in data[k])
            return cls(**data)
        except TypeError as exc:  # a wrong type in a hand-written recipe, e.g. "mean": 0.5
            raise ConfigError(f"invalid training config: {exc}") from None
