"""The one resolved configuration: configs/default.yaml, then an optional
`--config` file, then command-line flags, checked once at start-up.

This module does not import Paddle, so that the CPU environment can be tuned
before Paddle loads (see utils/runtime/process.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import yaml

from utils.runtime.errors import ConfigError
from utils.runtime.files import write_text_atomic
from utils.runtime.layout import RESERVED_RUN_NAMES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
CPU_PRESET = CONFIG_DIR / "cpu.yaml"  # a first model on a CPU: the default there (utils/pipeline/demo.py)
PRESETS = ("auto", "cpu", "full")
RECIPE_DIR = CONFIG_DIR / "recipes"
RECIPES = ("auto", "finetune", "scratch")
MIN_IMG_SIZE, MAX_IMG_SIZE = 32, 1024


def img_size_problem(value: object) -> Optional[str]:
    """What is wrong with an input size (training, a saved spec, a benchmark), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_IMG_SIZE <= value <= MAX_IMG_SIZE:
        return f"must be a whole number from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, not {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the images are, how they are read and how the folds split them."""
    data_dir: Optional[str]
    img_size: int
    num_folds: int
    folds: str
    seed: int
    batch_size: int
    image_memory_mb: int
    verify_data: bool
    unlabeled_dir: Optional[str]
    unlabeled_ratio: float
    split_file: Optional[str]


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """How training images are varied (evaluation is resize + centre crop), and mixed."""
    crop: str
    crop_scale_min: float
    hflip: float
    rotation: float
    color_jitter: float
    erasing: float
    auto_augment: str
    mixup_alpha: float
    cutmix_alpha: float


@dataclasses.dataclass(frozen=True)
class StudentSettings:
    """The network being trained, and what is put into it."""
    student: str
    student_weights: str
    student_width: float
    freeze_student_blocks: int
    attention: str
    attention_blocks: str


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    """The teacher: its network, weights and own training, and its stored outputs."""
    teacher: str
    teacher_weights: str
    teacher_train: str
    teacher_epochs: int
    teacher_lr: float
    teacher_img_size: int
    retrain_teacher: bool
    teacher_cache: str
    teacher_views: int
    teacher_cache_max_mb: int


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """What the student learns from the teacher, and the CE-only student it is measured against.
    `methods`: each distillation method's own settings (alpha, dkd_beta, ...), by key; each
    method declares them beside its class (utils/distill/methods.py), which checks them."""
    kd: str
    baseline: bool
    feature_kd: str
    temperature_schedule: str
    temperature_end: float
    methods: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """How the student (and, but for its epochs and learning rate, the teacher) is optimised."""
    recipe: str
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    lr_schedule: str
    restart_epochs: int
    head_epochs: int
    backbone_lr_scale: float
    patience: int
    ema_decay: float
    clip_grad_norm: float
    label_smoothing: float
    class_weights: str
    focal_gamma: float


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """How the work is carried out: devices, kernels, processes. Never what it computes."""
    device: str
    fast_depthwise: bool
    amp: bool
    num_workers: int
    parallel_folds: int
    dist_timeout_minutes: float


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """What a run leaves, and where."""
    output_dir: str
    log_dir: str
    run_name: Optional[str]
    quiet: bool
    final_model: bool
    find_label_issues: bool


# The sections of the configuration, in the order of configs/default.yaml. Every setting's key
# (its YAML key and its flag, --lr) is its field's name, unique across sections, so that a flat
# file of keys (every config.yaml before sections) places each key in its section unambiguously.
SECTIONS: dict[str, type] = {
    "data": DataSettings, "augment": AugmentSettings, "student": StudentSettings, "teacher": TeacherSettings,
    "distill": DistillSettings, "optim": OptimSettings, "runtime": RuntimeSettings, "outputs": OutputSettings,
}
METHODS_FIELD = "methods"  # DistillSettings' dict of the methods' own settings


@dataclasses.dataclass(frozen=True)
class Config:
    """The one resolved configuration, in sections; each layer below the pipeline is handed
    the section(s) it uses, never the whole. The values (and their meaning) live in
    configs/default.yaml."""
    data: DataSettings
    augment: AugmentSettings
    student: StudentSettings
    teacher: TeacherSettings
    distill: DistillSettings
    optim: OptimSettings
    runtime: RuntimeSettings
    outputs: OutputSettings

    def to_dict(self) -> dict[str, Any]:
        """Every setting by key, flat, the methods' among them: what flags and old files name."""
        flat: dict[str, Any] = {}
        for name in SECTIONS:
            values = dataclasses.asdict(getattr(self, name))
            flat.update(values.pop(METHODS_FIELD, {}))
            flat.update(values)
        return flat

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """Every setting by section and key, the methods' in `distill`: what config.yaml holds."""
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        sections["distill"].update(sections["distill"].pop(METHODS_FIELD))
        return sections

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings (by key) changed, checked again."""
        return build_config({**self.to_dict(), **changes})


@dataclasses.dataclass(frozen=True)
class Setting:
    """A number a component declares beside its class (a distillation method's settings):
    its key, default, meaning and range. Its key works in YAML files and as a flag."""
    name: str
    default: float
    help: str
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False  # the range excludes `low`: (low, high]
    whole: bool = False  # a whole number

    def range_text(self) -> str:
        if self.low_open:
            return f"in ({self.low:g}, {self.high:g}]"
        return f"{self.low:g} or more" if self.high == math.inf else f"between {self.low:g} and {self.high:g}"

    def value(self, raw: Any) -> float:
        """The raw YAML or flag value, checked: a number in range, or one line saying what is wrong."""
        number = _coerce(self.name, raw, int if self.whole else float)
        above_low = number > self.low if self.low_open else number >= self.low
        if not (above_low and number <= self.high):
            raise ConfigError(f"{self.name} must be {self.range_text()}, not {raw!r}")
        return number


def _field_types() -> dict[str, Any]:
    """Every core setting's type, by key (the methods' settings are their own)."""
    kinds = {}
    for section in SECTIONS.values():
        kinds.update({key: kind for key, kind in typing.get_type_hints(section).items() if key != METHODS_FIELD})
    return kinds


def section_of(key: str) -> Optional[str]:
    """The section a core setting belongs to; None for a key that is not one (a method's)."""
    return next((name for name, section in SECTIONS.items() if key in section.__dataclass_fields__
                 and key != METHODS_FIELD), None)


def _coerce(key: str, value: Any, expected: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or say what is wrong."""
    optional = typing.get_origin(expected) is typing.Union
    base = typing.get_args(expected)[0] if optional else expected
    if value is None or (optional and isinstance(value, str) and value.lower() in ("null", "")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value")
    if base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    if base in (int, float) and isinstance(value, (bool, str)):
        kind = "a whole number" if base is int else "a number"
        raise ConfigError(f"{key} must be {kind}, not {value!r}")
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be a whole number, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a whole number, not {value!r}") from None
    if base is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, not {value!r}")
        return number
    if isinstance(value, bool):
        # YAML 1.1 reads a bare off/on (and no/yes) as a boolean: `teacher_cache: off` means "off".
        return "on" if value else "off"
    return str(value)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that 1e-3 (no dot) is a number, as in YAML 1.2."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _mapping_without_repeated_keys(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A YAML mapping, refused when a key appears twice (PyYAML keeps the last silently)."""
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice (line "
                                                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeated_keys)


def _flag_value(text: str, expected: Any) -> Any:
    """A command-line value: a number where a number is expected (as Python reads it: 1e-3,
    inf), a YAML boolean where a boolean is, else the text itself (refused later if wrong)."""
    for kind in (int, float) if expected in (int, float) else ():
        try:
            return kind(text)
        except ValueError:
            continue
    if expected is bool:
        value = yaml.load(text, Loader=_Loader) if text.strip() else text
        return value if isinstance(value, bool) else text
    return text


def read_yaml(path: Path) -> dict[str, Any]:
    """A configuration file's settings, by key: from its sections (`optim:` with `lr: 0.001`
    inside), or from flat `key: value` lines as files before sections were written; both may
    mix. A key in another section than its own is refused in one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        values = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold 'key: value' lines, in sections or not")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        # `teacher` and `student` name both a section and a setting: a mapping is the section.
        inside = value if key in SECTIONS and (isinstance(value, dict) or value is None) else {key: value}
        for inner, setting in (inside or {}).items():
            home = section_of(inner)
            if inside is not value or home == key or (home is None and key == "distill"):
                if inner in flat:
                    raise ConfigError(f"{path}: {inner} is given twice (in and outside its section); keep one")
                flat[inner] = setting
            else:
                raise ConfigError(f"{path}: {inner} belongs in the section {home}, not {key}")
    return flat


def is_run_name(name: str) -> bool:
    """One folder name of letters, digits, dots, dashes and underscores, not a reserved one."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) is not None and name not in RESERVED_RUN_NAMES


def _check_ranges(values: dict[str, Any]) -> None:
    """Value checks that need no registry; names are checked where the registries live."""
    cfg = SimpleNamespace(**values)
    rules = [
        (img_size_problem(cfg.img_size) is None, f"img_size {img_size_problem(cfg.img_size)}"),
        (2 <= cfg.num_folds <= 100, "num_folds must be between 2 and 100"),
        (cfg.folds == "all" or re.fullmatch(r"\d+(,\d+)*", cfg.folds) is not None,
         "folds must be all or fold numbers separated by commas, such as 0,2"),
        (not re.fullmatch(r"\d+(,\d+)*", cfg.folds) or max(int(k) for k in cfg.folds.split(",")) < cfg.num_folds,
         f"--folds {cfg.folds}: the run has folds 0 to {cfg.num_folds - 1}"),
        (0 <= cfg.seed < 2**32, "seed must be between 0 and 2**32 - 1"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (0 < cfg.unlabeled_ratio <= 100, "unlabeled_ratio must be in (0, 100]"),
        (cfg.num_workers >= 0, "num_workers must be 0 or more"),
        (cfg.image_memory_mb >= 0, "image_memory_mb must be 0 or more"),
        (cfg.parallel_folds >= 0, "parallel_folds must be 0 or more"),
        (cfg.freeze_student_blocks >= 0, "freeze_student_blocks must be 0 or more"),
        (0.1 <= cfg.student_width <= 4.0, "student_width must be between 0.1 and 4"),
        (cfg.teacher_epochs >= 0, "teacher_epochs must be 0 or more"),
        (0 < cfg.teacher_lr <= 1, "teacher_lr must be in (0, 1]"),
        (cfg.teacher_img_size == 0 or img_size_problem(cfg.teacher_img_size) is None,
         f"teacher_img_size must be 0 (the student's) or a whole number from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}"),
        (cfg.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (cfg.class_weights in ("none", "balanced"), "class_weights must be none or balanced"),
        (0 <= cfg.focal_gamma <= 10, "focal_gamma must be between 0 and 10"),
        (0 <= cfg.ema_decay < 1, "ema_decay must be in [0, 1)"),
        (cfg.clip_grad_norm >= 0, "clip_grad_norm must be 0 or more"),
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (0 < cfg.lr <= 1, "lr must be in (0, 1]"),
        (0 <= cfg.weight_decay <= 1, "weight_decay must be between 0 and 1"),
        (cfg.warmup_epochs >= 0, "warmup_epochs must be 0 or more"),
        (cfg.patience >= 1, "patience must be at least 1"),
        (0 <= cfg.mixup_alpha <= 100, "mixup_alpha must be between 0 and 100"),
        (0 <= cfg.cutmix_alpha <= 100, "cutmix_alpha must be between 0 and 100"),
        (cfg.auto_augment in ("none", "randaugment", "trivialaugment"),
         "auto_augment must be none, randaugment or trivialaugment"),
        (0 < cfg.crop_scale_min <= 1, "crop_scale_min must be in (0, 1]"),
        (0 <= cfg.hflip <= 1, "hflip must be a probability between 0 and 1"),
        (0 <= cfg.rotation <= 180, "rotation must be between 0 and 180 degrees"),
        (0 <= cfg.color_jitter <= 1, "color_jitter must be between 0 and 1"),
        (0 <= cfg.erasing <= 1, "erasing must be a probability between 0 and 1"),
        (cfg.crop in ("random_resized", "pad"), "crop must be random_resized or pad"),
        (cfg.teacher_train in ("full", "head"), "teacher_train must be full or head"),
        (cfg.teacher_cache in ("off", "views"), "teacher_cache must be off or views"),
        (cfg.teacher_views >= 1, "teacher_views must be at least 1"),
        (cfg.teacher_cache_max_mb >= 1, "teacher_cache_max_mb must be at least 1"),
        (0 < cfg.dist_timeout_minutes <= 10_000, "dist_timeout_minutes must be in (0, 10000]"),
        (cfg.lr_schedule in ("cosine", "cosine_restarts"), "lr_schedule must be cosine or cosine_restarts"),
        (cfg.restart_epochs >= 1, "restart_epochs must be at least 1"),
        (cfg.head_epochs >= 0, "head_epochs must be 0 or more"),
        (0 < cfg.backbone_lr_scale <= 1, "backbone_lr_scale must be in (0, 1]"),
        (cfg.temperature_schedule in ("constant", "linear", "cosine"),
         "temperature_schedule must be constant, linear or cosine"),
        (0 < cfg.temperature_end <= 100, "temperature_end must be in (0, 100]"),
        (cfg.device in ("auto", "cpu", "gpu"), "device must be auto, cpu or gpu"),
        (cfg.attention_blocks == "all" or cfg.attention_blocks.isdigit(),
         "attention_blocks must be 'all' or a number of blocks"),
        (cfg.run_name is None or is_run_name(cfg.run_name),
         "run_name must be one folder name (letters, digits, '.', '-', '_'), and not latest or teachers"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


def build_config(values: dict[str, Any]) -> Config:
    """A checked Config from a complete dict of raw values, by key. Keys that are not core
    settings are kept, unchecked, in the distill section's `methods`: the methods that declare
    them check them (utils/distill/methods.py), and refuse keys that no method declares."""
    kinds = _field_types()
    missing = sorted(set(kinds) - set(values))
    if missing:
        raise ConfigError(f"missing setting(s) {', '.join(missing)}")
    coerced = {key: _coerce(key, values[key], kinds[key]) for key in kinds}
    _check_ranges(coerced)
    methods = {key: value for key, value in values.items() if key not in kinds}
    return Config(**{name: section(**{key: coerced[key] for key in section.__dataclass_fields__
                                      if key != METHODS_FIELD},
                                   **({METHODS_FIELD: methods} if name == "distill" else {}))
                     for name, section in SECTIONS.items()})


@dataclasses.dataclass
class SettingDoc:
    """A key of default.yaml as its text documents it: its section, value and comments."""
    section: str
    key: str
    default: str
    comment: str


_SECTION = re.compile(r"^(\w+):\s*(?:#.*)?$")  # a section's first line, at the left margin
_SETTING = re.compile(r"^\s+(\w+):\s*(.*?)\s*(?:#\s*(.*))?$")  # a setting, indented in its section


def _sentences(*parts: str) -> str:
    """Comments joined as sentences: the one above a key and the one beside it would otherwise
    run together in --help ("... 2.5x slower true | false")."""
    parts = [part.strip() for part in parts if part.strip()]
    return " ".join(part if part[-1] in ".:;" or part is parts[-1] else part + "." for part in parts)


def setting_docs(path: Path = DEFAULT_CONFIG) -> list[SettingDoc]:
    """Every key of default.yaml with its value, its inline comment and the comment lines right
    above it, under the section it is in (named with the comment lines above the section)."""
    docs, section, above = [], "Settings", []
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _SECTION.match(line):
            section, above = _sentences(" ".join(above)) or match.group(1), []
        elif line.lstrip().startswith("#"):
            above.append(line.strip().lstrip("# ").strip())
        elif match := _SETTING.match(line):
            key, default, inline = match.groups()
            docs.append(SettingDoc(section, key, default, _sentences(" ".join(above), inline or "")))
            above = []
        else:
            above = []
    return docs


def add_config_flags(parser: argparse.ArgumentParser, component_settings: Sequence[Setting] = ()) -> None:
    """One `--key VALUE` flag per setting, grouped and explained as configs/default.yaml
    groups and explains them; boolean flags may stand alone (`--amp`). The components'
    settings (the distillation methods') follow in their own group."""
    parser.add_argument("--config", metavar="PATH", help="YAML file whose settings replace configs/default.yaml's")
    parser.add_argument("--resume", metavar="RUN_NAME",
                        help="continue an interrupted run with its saved settings: finished folds are kept and "
                             "an unfinished fold goes on from its last finished epoch")
    parser.add_argument("--preset", choices=PRESETS,
                        help="the settings a run starts from, under --config and the flags: cpu, configs/cpu.yaml "
                             "(a first model in minutes); full, configs/default.yaml alone; auto (the default): cpu "
                             "on a machine without a GPU, full on one with")
    kinds = _field_types()
    scratch = read_yaml(RECIPE_DIR / "scratch.yaml")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for doc in setting_docs():
        group = groups.get(doc.section) or groups.setdefault(doc.section, parser.add_argument_group(doc.section))
        # Weights `none` take the scratch recipe's value (recipe: auto): both are shown when they differ.
        differs = doc.key in scratch and str(scratch[doc.key]) != str(doc.default)
        from_scratch = f"; scratch recipe: {scratch[doc.key]}" if differs else ""
        help_text = f"{doc.comment} (default: {doc.default}{from_scratch})".replace("%", "%%")
        if kinds[doc.key] is bool:
            group.add_argument(f"--{doc.key}", nargs="?", const="true", default=None, metavar="BOOL", help=help_text)
        else:
            group.add_argument(f"--{doc.key}", default=None, metavar=doc.key.split("_")[-1].upper(), help=help_text)
    if component_settings:
        group = parser.add_argument_group("Distillation methods' settings (utils/distill/methods.py)")
    for setting in component_settings:
        group.add_argument(f"--{setting.name}", default=None, metavar=setting.name.split("_")[-1].upper(),
                           help=f"{setting.help} (default: {setting.default:g}; {setting.range_text()})")


def recipe_values(values: dict[str, Any]) -> dict[str, Any]:
    """The recipe's settings that apply, given the other settings.

    default.yaml holds the values for fine-tuning ImageNet weights; recipes/scratch.yaml
    those for training from scratch. `recipe: auto` takes from scratch.yaml the keys of
    a model whose weights are `none`: keys that start with `teacher` follow
    teacher_weights, all others student_weights.
    """
    recipe = str(values["recipe"])
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    if recipe == "finetune":
        return {}
    scratch = read_yaml(RECIPE_DIR / "scratch.yaml")
    if recipe == "scratch":
        return scratch

    def from_scratch(key: str) -> bool:
        return str(values["teacher_weights" if key.startswith("teacher") else "student_weights"]) == "none"

    return {key: value for key, value in scratch.items() if from_scratch(key)}


def resolve_config(args: argparse.Namespace, extra_file: Optional[Path] = None,
                   component_settings: Sequence[Setting] = ()) -> Config:
    """default.yaml, then the recipe's values, then `extra_file` (the demo preset), then
    `--config`, then the flags (of the core settings and of `component_settings`): what
    the user chose always wins over the recipe."""
    chosen: dict[str, Any] = {}
    for path in (extra_file, Path(args.config) if args.config else None):
        if path is not None:
            chosen.update(read_yaml(path))
    kinds = {**_field_types(), **{setting.name: float for setting in component_settings}}
    for key, expected in kinds.items():
        flag = getattr(args, key, None)
        if flag is not None:
            chosen[key] = _flag_value(flag, expected)
    values = read_yaml(DEFAULT_CONFIG)
    values.update(recipe_values({**values, **chosen}))
    values.update(chosen)
    return build_config(values)


# Settings that change how a run is carried out, not what it computes: a run may continue with other values.
RUNTIME_SETTINGS = ("parallel_folds", "num_workers", "image_memory_mb", "quiet", "device", "fast_depthwise", "folds",
                    "find_label_issues", "dist_timeout_minutes", "verify_data")


def resumed_config(args: argparse.Namespace) -> Config:
    """The saved settings of run `args.resume`, with only runtime settings taken from the flags."""
    others = [key for key, value in vars(args).items() if value is not None
              and key not in (*RUNTIME_SETTINGS, "output_dir", "resume", "config", "report", "preset")]
    if others or args.config:
        given = ", ".join(f"--{key}" for key in others or ["config"])
        raise ConfigError(f"--resume continues a run with its saved settings, so {given} cannot be given with it; "
                          f"only --{', --'.join(RUNTIME_SETTINGS)} and --output_dir may")
    output_dir = Path(args.output_dir or read_yaml(DEFAULT_CONFIG)["output_dir"])
    saved = output_dir / args.resume / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"there is no run {args.resume} to resume: {saved} does not exist "
                          "(pass --output_dir if the run was saved elsewhere)")
    values = {**load_saved_config(saved).to_dict(), "output_dir": str(output_dir)}
    kinds = _field_types()
    values.update({key: _flag_value(getattr(args, key), kinds[key]) for key in RUNTIME_SETTINGS
                   if getattr(args, key) is not None})
    return build_config(values)


def save_config(cfg: Config, path: Path) -> None:
    """The run's settings, in sections, as config.yaml."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_sections(), sort_keys=False))


def load_saved_config(path: Path) -> Config:
    """A config.yaml written by save_config, merged over today's defaults."""
    values = read_yaml(DEFAULT_CONFIG)
    values.update(read_yaml(path))
    return build_config(values)
