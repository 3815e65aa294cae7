"""Typed run configuration: dataclasses, YAML presets, dotted overrides, validation.

A run is fully described by its resolved :class:`Config`, which is validated before any data
loads and saved as ``config.yaml`` next to the run's outputs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import tokenize
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value, key or file that cannot be used; the message names it."""


@dataclass
class DataConfig:
    """Where the images come from and how they are turned into tensors."""

    source: str = "fashion_mnist"  # fashion_mnist | cifar100 | list | inat_json | folder
    root: str = ""  # IDX folder, CIFAR root, image root of a list file, or ImageFolder root
    train_list: str = ""  # source=list: training split, lines "relative/path label"
    test_list: str = ""  # source=list: evaluation split
    val_list: str = ""  # source=list: validation split, evaluated every val_every epochs (select: best_val)
    train_dir: str = "train"  # source=folder: subfolder of root holding the training classes
    test_dir: str = "val"  # source=folder: subfolder of root holding the test classes (the reported numbers)
    val_dir: str = ""  # source=folder: subfolder of root holding validation classes (select: best_val); not test_dir
    class_index: str = ""  # optional "folder_name label" file mapping class folders to labels (ImageNet-Sketch)
    class_names: str = ""  # readable class names for text prompts (model.text), one a line in label order
    download: bool = False  # fashion_mnist / cifar100: fetch through torchvision when missing
    imbalance_ratio: float = 1.0  # > 1: subsample training set to n_i = n_max * ratio^(-i/(C-1))
    max_per_class: int = 0  # n_max of the long-tail profile; 0 = size of the largest class
    subsample_seed: int = 0  # seed of the per-class shuffles that pick the kept and the held-out images
    holdout: float = 0.0  # > 0: evaluate on this fraction of each class's training images, kept out of training
    img_size: int = 224  # training and evaluation crop
    test_resize: int = 0  # resize before the centre crop at evaluation (see test_resize_mode); 0: img_size * 256 / 224
    test_resize_mode: str = "shorter"  # shorter: shorter side to test_resize | square: test_resize x test_resize
    init_resize: int = 0  # head_init class_mean / linear_probe: resize before their centre crop; 0 = test_resize
    interpolation: str = "bicubic"  # bicubic (timm's ViT configs) | bilinear (torchvision's default)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per channel, on pixels scaled to [0, 1]
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per channel: (pixel - mean) / std
    train_aug: str = "rrc_flip"  # rrc_flip | mda (LIFT+: square crops, scale rising over the epochs) | crop_flip | none
    mda_func: str = "convex"  # train_aug=mda: how its minimum crop scale rises: min | convex | linear | concave | max
    decode: str = "exact"  # training crops of rrc_flip on image files: exact | fast (DCT-scaled) | gpu (nvJPEG)
    num_workers: int = 4  # image-loading processes per stream; 0 loads in the training process
    samples_per_class: int = 4  # class-balanced sampling: images taken from each picked class
    skip_bad_images: bool = False  # scan image files before training; drop unreadable ones into bad_images.txt


@dataclass
class ModelConfig:
    """The frozen backbone and the trainable prompts and classifier on top of it."""

    backbone: str = "vit_base_patch16_224.augreg_in21k"  # any timm ViT name with its weights tag
    pretrained: bool = True  # load the timm pretrained weights of `backbone` (hub, cached)
    checkpoint: str = ""  # local weights file (.safetensors, .pth, .npz); overrides `pretrained`
    backbone_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs
    prompt_len: int = 10  # tokens per block of the shared and of each group prompt
    pool_size: int = 20  # m, number of group prompts
    split_block: int = 6  # K: group prompts enter blocks K+1..L
    top_k: int = 2  # k, groups selected per image
    feature_dropout: float = 0.1  # dropout on the feature before the classifier, in training
    head: str = "cosine"  # cosine | linear
    head_init: str = "random"  # random | class_mean | linear_probe: from the training features | text: class names
    # (LIFT+'s names are read as these: none -> random, linear_probing -> linear_probe, semantic -> text)
    prompt_depth: str = "deep"  # deep (a prompt per block, keys/values only) | shallow (VPT-Shallow: tokens at input)
    query: str = "shared"  # phase-2 query function: shared (the phase-1 prompted ViT) | plain (the ViT alone)
    layer_norm_eps: float = 0.0  # > 0 overrides the backbone's LayerNorm eps (official LPT checkpoints: 1e-5)
    peft: list[str] = field(default_factory=list)  # modules in the blocks: bitfit ln lora ssf adapter adaptformer aft
    peft_dim: int = 0  # bottleneck width / LoRA rank of model.peft; 0 = LIFT's rule, 2 ** int(log2(C / 2L))
    aft_ratio: float = 0.0  # peft aft: share of the chosen weights' entries that train; 0 = LIFT+'s, C / (L (a D + b))
    aft_loc: str = "all"  # peft aft: attn (qkv, proj) | mlp (fc1, fc2) | all (the four)
    aft_seed: int = 0  # peft aft: seed of the fixed random mask (LIFT+: 0)
    text: str = ""  # open_clip model (ViT-B-16) or model-config .json whose text tower embeds the class names
    text_pretrained: str = ""  # open_clip weights tag (openai) or file of model.text; a tag yields to model.checkpoint
    templates: str = "single"  # prompts per class: single ("a photo of a {}.") | ensemble (CLIP's 80 ImageNet ones)
    projection: bool = False  # classify in CLIP's joint space, through the image tower's frozen projection


@dataclass
class LossConfig:
    """Classification loss and the weights of dual sampling."""

    name: str = "agcl"  # agcl | gcl | ce | la (logit adjustment) | bs (balanced softmax) | ldam | focal | grw | lade
    margin: float = 0.1  # gcl / agcl: subtracted from the true-class cosine
    scale: float = 20.0  # multiplier of the cosine logits (inverse softmax temperature)
    noise_mul: float = 0.5  # gcl / agcl: strength of the Gaussian cloud, larger for rarer classes
    label_smoothing: float = 0.1  # eps of label smoothing
    gamma_pos_balanced: float = 0.0  # A-GCL focusing on the true class, class-balanced batch
    gamma_neg_balanced: float = 4.0  # A-GCL focusing on the other classes, class-balanced batch
    gamma_pos_instance: float = 0.5  # A-GCL focusing on the true class, instance-balanced batch
    gamma_neg_instance: float = 8.0  # A-GCL focusing on the other classes, instance-balanced batch
    eta: float = 0.5  # instance-batch weight beta = eta * (E - e) / E
    tau: float = 1.0  # la: CE(scale * logits + tau * log(n_j / sum n)); 0 = plain CE (LIFT's default: 1)
    max_margin: float = 0.5  # ldam: the rarest class's margin; margins ~ n_j^(-1/4), times scale (LDAM, LIFT: 0.5)
    drw_epoch: int = 0  # ldam: from this epoch of each phase (from 0) class-balanced weights, beta 0.9999; 0 = never
    cb_beta: float = 0.0  # ce / la / focal: class-balanced weights (1-beta) / (1-beta^n_j); 0 = off (Cui, LIFT: 0.9999)
    focal_gamma: float = 2.0  # focal: each image's CE times (1 - p_y)^gamma; 0 = CE (LIFT's default: 2)
    grw_exp_scale: float = 1.0  # grw: class weights (n_j / sum n)^(-this), mean 1; 0 = CE (LIFT+'s default: 1)
    lade_lambda: float = 0.1  # lade: weight of the squared second term of the regularised MINE bound (LIFT+: 0.1)
    lade_weight: float = 0.1  # lade: weight of the label-distribution estimate beside the adjusted CE (LIFT+: 0.1)


@dataclass
class PhaseConfig:
    """Optimisation of one training phase."""

    epochs: int = 10  # passes over the training set
    batch_size: int = 64  # per iteration and per stream (dual sampling draws two such batches)
    lr: float = 0.02  # base learning rate for a batch of 256; the run uses lr * batch_size / 256
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # SGD weight decay on the trained tensors
    warmup_epochs: float = 1.0  # linear warm-up of the learning rate, then cosine decay
    schedule: str = "steps"  # steps: warm-up, cosine per step | published: timm's cosine per epoch (DongSky/LPT)
    sampling: str = "dual"  # dual | instance | balanced
    grad_accum: int = 1  # split each step's batches into this many micro-batches (less memory, same result)


@dataclass
class WandbConfig:
    """Weights & Biases tracking of a run (the optional extra lpt[wandb]); off while ``project`` is empty."""

    project: str = ""  # W&B project; "" = no W&B run
    entity: str = ""  # W&B user or team; "" = the logged-in user's default
    group: str = ""  # W&B group of the run; "" = log.group
    mode: str = "online"  # online | offline (files under RUN_DIR/wandb/, for `wandb sync`)


@dataclass
class MlflowConfig:
    """MLflow tracking of a run (the optional extra lpt[mlflow]); off while ``tracking_uri`` is empty."""

    tracking_uri: str = ""  # a folder (lpt keeps mlflow.db in it) or an MLflow URI (sqlite:///mlruns.db, http://...)
    experiment: str = "lpt"  # MLflow experiment of the run, made when missing


@dataclass
class LogConfig:
    """Experiment trackers beside TensorBoard: each gets the config, every metrics.jsonl record and the results."""

    group: str = ""  # runs that belong together (a study): the W&B group, and the MLflow parent run they nest under
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class Config:
    """Everything a run needs; saved as config.yaml in the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    phase2: PhaseConfig = field(default_factory=PhaseConfig)
    method: str = "lpt"  # lpt | lpt_joint | vpt | linear | full | peft | crt | lws ...: a module of lpt.methods
    phases: list[str] = field(default_factory=lambda: ["phase1", "phase2"])  # lpt: phase1, phase2; others: phase1
    seed: int = 0  # seed of initialisation, sampling and augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on GPU)
    compile: bool = False  # torch.compile the model's forwards (GPU: LPT phase-2 training 1.36x faster on an H100)
    eval_batch_size: int = 256  # images per evaluation batch
    tta: str = "none"  # test-time ensembling: none | flip (image and mirror) | crops (LIFT: 5 crops of a larger image)
    tta_expand: int = 24  # tta=crops: resize to data.img_size + this (LIFT: 24; 21 for ViT-L/14), then 5 crops
    init: str = ""  # run starting this one: its phase-1 tensors (phases=[phase2]), or all of it (crt, lws)
    checkpoint_every: int = 0  # > 0: save a resumable state every this many steps (always at epoch ends)
    val_every: int = 1  # with data.val_list / val_dir: evaluate on it every this many epochs (and at each phase's end)
    select: str = "last"  # last: the model after the last epoch | best_val: the epoch best on the validation split
    deterministic: bool = False  # deterministic algorithms only: identical reruns and resumed runs on CPU
    progress: bool = True  # progress bar on an interactive terminal
    threads: int = 0  # CPU threads of torch's operators; 0 = as the caller set them (lpt: --threads, else all usable)
    log: LogConfig = field(default_factory=LogConfig)


CHOICES = {
    "data.source": ("fashion_mnist", "cifar100", "list", "inat_json", "folder"),
    "model.head": ("cosine", "linear"),
    "model.head_init": ("random", "class_mean", "linear_probe", "text"),
    "model.templates": ("single", "ensemble"),
    "model.prompt_depth": ("deep", "shallow"),
    "model.query": ("shared", "plain"),
    "model.aft_loc": ("attn", "mlp", "all"),
    "data.train_aug": ("rrc_flip", "mda", "crop_flip", "none"),
    "data.mda_func": ("min", "convex", "linear", "concave", "max"),
    "data.decode": ("exact", "fast", "gpu"),
    "data.test_resize_mode": ("shorter", "square"),
    "data.interpolation": ("bicubic", "bilinear"),
    "loss.name": ("agcl", "gcl", "ce", "la", "bs", "ldam", "focal", "grw", "lade"),
    "phase1.sampling": ("dual", "instance", "balanced"),
    "phase2.sampling": ("dual", "instance", "balanced"),
    "precision": ("fp32", "bf16", "fp16"),
    "phase1.schedule": ("steps", "published"),
    "phase2.schedule": ("steps", "published"),
    "select": ("last", "best_val"),
    "tta": ("none", "flip", "crops"),
    "log.wandb.mode": ("online", "offline"),
}
PHASES = ("phase1", "phase2")
# LIFT+'s classifier_init names (shijxcs/LIFT-plus@ea555ea trainer.py:340-374; utils/config.py:47) -> model.head_init
LIFT_PLUS_HEAD_INIT = {"none": "random", "linear_probing": "linear_probe", "semantic": "text"}
PEFT = ("bitfit", "ln", "lora", "ssf", "adapter", "adaptformer", "aft")  # lpt.model.peft


def test_resize_of(data: DataConfig) -> int:
    """The evaluation resize of ``data``: ``test_resize``, or when it is 0 the img_size scaled as 256 is to 224
    (the usual crop ratio 0.875), so that a small img_size is not a centre crop of a 256-pixel upscale."""
    return data.test_resize or round(data.img_size * 256 / 224)


def validate(cfg: Config) -> Config:
    """Check choices, ranges and cross-field rules, raising ConfigError naming the key; resolve
    ``data.test_resize=0`` (:func:`test_resize_of`), so that the saved config.yaml says what ran. The method's
    own rules (which phases, prompts or not) belong to the method: ``lpt.methods.check_config``. LIFT+'s
    classifier-init names are resolved to ``model.head_init``'s (:data:`LIFT_PLUS_HEAD_INIT`)."""
    cfg.model.head_init = LIFT_PLUS_HEAD_INIT.get(cfg.model.head_init, cfg.model.head_init)
    for key, allowed in CHOICES.items():
        value = get_value(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is {value!r}; expected one of {', '.join(allowed)}")
    if any(p not in PHASES for p in cfg.phases):
        raise ConfigError(f"config key 'phases' is {cfg.phases!r}; expected a list drawn from {', '.join(PHASES)}")
    if cfg.phases != sorted(set(cfg.phases), key=PHASES.index):
        raise ConfigError(f"config key 'phases' is {cfg.phases!r}; phases run once each, phase1 before phase2")
    m = cfg.model
    positive = {
        "model.pool_size": m.pool_size, "model.top_k": m.top_k,
        "data.img_size": cfg.data.img_size, "data.samples_per_class": cfg.data.samples_per_class,
        "eval_batch_size": cfg.eval_batch_size, "val_every": cfg.val_every,
    }
    for phase in PHASES:
        p = getattr(cfg, phase)
        positive.update({f"{phase}.epochs": p.epochs, f"{phase}.batch_size": p.batch_size, f"{phase}.lr": p.lr,
                         f"{phase}.grad_accum": p.grad_accum})
        if p.schedule == "published" and not float(p.warmup_epochs).is_integer():
            raise ConfigError(f"config key '{phase}.warmup_epochs' is {p.warmup_epochs}; the published schedule "
                              "warms up whole epochs")
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"config key '{key}' is {value!r}; expected a positive number")
    if m.top_k > m.pool_size:
        raise ConfigError(f"config key 'model.top_k' is {m.top_k}; expected at most model.pool_size ({m.pool_size})")
    if m.prompt_len < 0:
        raise ConfigError(f"config key 'model.prompt_len' is {m.prompt_len}; expected 0 or more")
    _validate_peft(m)
    if m.split_block < 0:
        raise ConfigError(f"config key 'model.split_block' is {m.split_block}; expected 0 or more")
    for name, value in m.backbone_args.items():
        if not str(name).isidentifier() or value is None:
            raise ConfigError(
                f"config key 'model.backbone_args' has entry {name!r} with no value; "
                "write {key: value} with a space after each colon"
            )
    if cfg.tta_expand < 0:
        raise ConfigError(f"config key 'tta_expand' is {cfg.tta_expand}; expected 0 or more pixels")
    if cfg.threads < 0:
        raise ConfigError(f"config key 'threads' is {cfg.threads}; expected 0 (as the caller set them) or more")
    if not 0 <= cfg.model.feature_dropout < 1:
        raise ConfigError(f"config key 'model.feature_dropout' is {cfg.model.feature_dropout}; expected [0, 1)")
    if cfg.select == "best_val" and not (cfg.data.val_list or cfg.data.val_dir):
        raise ConfigError("config key 'select' is 'best_val' but data.val_list (data.val_dir for a folder) names no "
                          "validation split; the test split is never used to choose a checkpoint")
    _validate_data(cfg.data)
    _validate_loss(cfg.loss, [getattr(cfg, p).grad_accum for p in cfg.phases])
    _validate_text(m)
    return cfg


def _validate_peft(m: ModelConfig) -> None:
    """Known, distinct PEFT modules; AFT's share, and no module that changes the tensors AFT trains entries of."""
    unknown = [p for p in m.peft if p not in PEFT]
    if unknown or len(set(m.peft)) != len(m.peft) or m.peft_dim < 0:
        raise ConfigError(f"config key 'model.peft' is {m.peft!r} (peft_dim {m.peft_dim}); expected distinct names "
                          f"from {', '.join(PEFT)} and model.peft_dim >= 0")
    if "aft" in m.peft and (set(m.peft) & {"lora", "ssf", "bitfit"} or not 0 <= m.aft_ratio <= 1):
        raise ConfigError(f"config key 'model.peft' is {m.peft!r} with aft_ratio {m.aft_ratio}; aft trains entries "
                          "of the weights that lora, ssf and bitfit also change (leave them out), with "
                          "0 <= aft_ratio <= 1")


def _validate_text(m: ModelConfig) -> None:
    """The keys that need a text tower (model.text) have one."""
    if m.head_init == "text" and not m.text:
        raise ConfigError("config key 'model.head_init' is 'text' but model.text names no text tower; set "
                          "model.text to an open_clip model such as ViT-B-16 (a CLIP preset sets it)")
    if m.projection and not m.text:
        raise ConfigError("config key 'model.projection' is true but model.text names no text tower: the "
                          "projection leads into a CLIP joint space; set model.text (a CLIP preset sets it)")


def _validate_loss(lc: LossConfig, grad_accums: list[int]) -> None:
    """The ranges of the long-tail loss keys, the losses each key applies to (a key that would be ignored), and
    LADE's whole batches (``grad_accums``: of the phases that run)."""
    if lc.name == "lade" and any(g > 1 for g in grad_accums):
        raise ConfigError("config key 'loss.name' is 'lade' with grad_accum > 1; LADE's bound is a statistic of the "
                          "whole batch, which micro-batches would change: set grad_accum=1")
    for key, value in {"tau": lc.tau, "max_margin": lc.max_margin, "drw_epoch": lc.drw_epoch,
                       "focal_gamma": lc.focal_gamma, "grw_exp_scale": lc.grw_exp_scale,
                       "lade_lambda": lc.lade_lambda, "lade_weight": lc.lade_weight}.items():
        if value < 0:
            raise ConfigError(f"config key 'loss.{key}' is {value}; expected 0 or more")
    if not 0 <= lc.cb_beta < 1:
        raise ConfigError(f"config key 'loss.cb_beta' is {lc.cb_beta}; expected [0, 1) (0: no class-balanced weights)")
    if lc.cb_beta > 0 and lc.name not in ("ce", "la", "focal"):
        raise ConfigError(f"config key 'loss.cb_beta' is {lc.cb_beta} but applies to loss.name ce, la or focal, not "
                          f"{lc.name!r} (ldam re-weights through loss.drw_epoch)")
    if lc.drw_epoch > 0 and lc.name != "ldam":
        raise ConfigError(f"config key 'loss.drw_epoch' is {lc.drw_epoch} but deferred re-weighting applies to "
                          f"loss.name ldam, not {lc.name!r}")


def _validate_data(d: DataConfig) -> None:
    """The ranges and cross-field rules of ``data.*`` (img_size is checked positive before)."""
    if not 0 <= d.holdout < 1:
        raise ConfigError(f"config key 'data.holdout' is {d.holdout}; expected a fraction in [0, 1) of each "
                          "class's training images to evaluate on (0: the source's evaluation split)")
    if d.val_list and d.source not in ("list", "inat_json"):
        raise ConfigError(f"config key 'data.val_list' is set but data.source is {d.source!r}; a validation "
                          "list needs data.source=list or inat_json")
    if d.val_dir and d.source != "folder":
        raise ConfigError(f"config key 'data.val_dir' is set but data.source is {d.source!r}; a validation folder "
                          "needs data.source=folder (data.val_list for a list or inat_json source)")
    if d.val_dir and d.val_dir == d.test_dir and not d.holdout:
        raise ConfigError(f"config key 'data.val_dir' is {d.val_dir!r}, the test folder (data.test_dir); the test "
                          "split never chooses a checkpoint: give validation images their own folder")
    if d.imbalance_ratio < 1:
        raise ConfigError(f"config key 'data.imbalance_ratio' is {d.imbalance_ratio}; expected 1 or more")
    if len(d.mean) != len(d.std):
        raise ConfigError("config keys 'data.mean' and 'data.std' must have the same length")
    for key, resize in (("test_resize", d.test_resize), ("init_resize", d.init_resize)):
        if resize != 0 and resize < d.img_size:
            raise ConfigError(f"config key 'data.{key}' is {resize}; expected 0 (follow "
                              f"data.{'img_size' if key == 'test_resize' else 'test_resize'}) or at least "
                              f"data.img_size ({d.img_size})")
    d.test_resize = test_resize_of(d)


# ----------------------------------------------------------------------------- building from data


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn a YAML value into the declared type, or raise ConfigError naming the key."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _from_dict(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {tp} at {key}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} at {key}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = prefix[:-1] or "the top level"
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys of {where}: {', '.join(sorted(hints))}"
        )
    kwargs = {name: _coerce(prefix + name, value, hints[name]) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested mapping."""
    return validate(_from_dict(Config, data or {}))


def get_value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set_nested(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _check_key(key: str) -> None:
    """Raise ConfigError when a dotted key names no field (``backbone_args.*`` is free-form)."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = _field_types(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key '{key}'; valid keys of {where}: {', '.join(sorted(hints))}")
        tp = hints[part]
        if typing.get_origin(tp) is dict:
            return
        if not dataclasses.is_dataclass(tp):
            if i != len(parts) - 1:
                raise ConfigError(f"unknown config key '{key}'; '{'.'.join(parts[:i + 1])}' has no sub-keys")
            return
        cls = tp
    raise ConfigError(f"config key '{key}' names a section; set one of its keys, e.g. '{key}.<name>=...'")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        _check_key(key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': the value of '{key}' is not valid YAML") from None
        _set_nested(data, key, value)
    return data


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as YAML) into timm.create_model keyword arguments."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"backbone argument '{item}' is not of the form name=value (e.g. img_size=384)")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"backbone argument '{item}': the value is not valid YAML") from None
    return out


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lpt.presets").iterdir() if p.name.endswith(".yaml"))


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a YAML parse error: the file, where the parser stopped, and its complaint (PyYAML's own
    message spans several lines, quoting the offending text)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}{where}: not valid YAML: {problem}"


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data or {}


def load_config(preset_or_path: str, overrides: list[str] | None = None) -> Config:
    """Resolve a preset name or a YAML file, apply overrides, and validate.

    Args:
        preset_or_path: name of a packaged preset (``lpt train --config demo``) or a YAML path.
        overrides: ``dotted.key=value`` strings applied after the file.
    """
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = read_yaml(path)
    elif preset_or_path in preset_names():
        data = read_yaml(Path(str(resources.files("lpt.presets") / f"{preset_or_path}.yaml")))
    else:
        raise ConfigError(
            f"config '{preset_or_path}' is neither a YAML file nor a preset; presets: {', '.join(preset_names())}"
        )
    return from_dict(apply_overrides(data, overrides or []))


@functools.cache
def _field_comments() -> dict[str, dict[str, str]]:
    """Dataclass name -> field name -> the comment on that field's line in this file: the one description
    of each key, which ``lpt config --show`` prints beside its value."""
    source = Path(__file__).read_text(encoding="utf-8")
    comments = {tok.start[0]: tok.string[1:].strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    return {node.name: {stmt.target.id: comments.get(stmt.end_lineno, "") for stmt in node.body
                        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
            for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}


def describe(cfg: Any) -> list[tuple[str, Any, str]]:
    """(dotted key, value, comment) of every key of ``cfg``, in declaration order."""
    comments = _field_comments()
    rows = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += [(f"{f.name}.{key}", v, c) for key, v, c in describe(value)]
        else:
            rows.append((f.name, value, comments.get(type(cfg).__name__, {}).get(f.name, "")))
    return rows


def save_config(cfg: Config, path: Path) -> None:
    from lpt.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
