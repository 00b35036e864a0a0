"""Run options as dataclasses: argparse is built from them, wandb logs them and results.json records them.

`RunConfig` holds the options every script shares plus the technique's own options (a dataclass per technique,
one flag per field). It is frozen: values resolved while running (device, weights kind, prompt form, run name)
are recorded beside it in the results, never patched into it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "microsoft/BioGPT-Large-PubMedQA"
DATA_DIR_ENV = "PUBMEDQA_DATA_DIR"
TOKENIZER_DIR_ENV = "BIOGPT_TOKENIZER_DIR"


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def option(default=None, help: str = "", *, factory=None, **argparse_kwargs):
    """A dataclass field that is also one command-line flag: `help` and argparse extras (choices, flag, type)."""
    metadata = {"help": help, **argparse_kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Options:
    """A technique's own options. Subclasses add fields (each is a flag), validate them in __post_init__ and say
    which variant and dtype they run; this base class is the baseline: float32, eager, nothing applied."""

    @property
    def variant(self) -> str:
        return "fp32-eager"

    @property
    def dtype(self) -> str:
        return "float32"

    def batch_buckets(self) -> list[int] | None:
        """Sequence lengths every batch is padded up to (static-shape compiled code: one compilation per shape);
        None: token-budget batches as they are."""
        return None

    def check(self, cfg: "RunConfig", device) -> None:
        """Refuse, before any loading, what this run cannot do on this device (raise UsageError). The matrix skips
        a variant for the same reason, so this is the one place a technique's device needs are written."""


@dataclass(frozen=True)
class DtypeOptions(Options):
    """A technique that runs the whole model in a dtype the user picks (--dtype)."""
    dtype_name: str = option("float32", "Model weights and activations.", choices=["float32", "float16", "bfloat16"],
                             flag="--dtype")

    @property
    def dtype(self) -> str:
        return self.dtype_name


def _env(name: str):
    return lambda: os.environ.get(name)


@dataclass(frozen=True)
class RunConfig:
    model: str = option(DEFAULT_MODEL, "Hub id, local model directory, or a random-weight preset "
                                       "(tiny-random, biogpt-base-random, biogpt-large-random).")
    tokenizer_dir: str | None = option(
        factory=_env(TOKENIZER_DIR_ENV),
        help=f"Directory with a fairseq dict.txt and bpecodes to build the tokenizer from (env {TOKENIZER_DIR_ENV}); "
             "by default the model's own tokenizer.")
    data_dir: str | None = option(
        factory=_env(DATA_DIR_ENV),
        help=f"PubMedQA directory with ori_pqal.json and test_ground_truth.json (env {DATA_DIR_ENV}); "
             "by default the Hugging Face Hub (bigbio/pubmed_qa).")
    limit: int | None = option(None, "Evaluate only the first N test PMIDs in ascending numeric order.")
    batch_size: int = option(16, "Questions per forward pass.")
    decode: str = option("score", "score: argmax over the yes/no/maybe next-token logits; generate: greedy "
                                  "decoding and answer parsing (the paper's protocol).", choices=["score", "generate"])
    max_new_tokens: int = option(16, "Generate mode: the most tokens decoded per question.")
    prompt: str = option("auto", "learned: BioGPT's 9 learned soft-prompt tokens (the embedding rows after the "
                                 "vocabulary) between context and answer, as the model was fine-tuned; plain: "
                                 "without them; auto: learned when the model has those rows.",
                         choices=["auto", "learned", "plain"])
    device: str = option("auto", "auto picks CUDA when it is present.", choices=["auto", "cuda", "cpu"])
    attn_implementation: str = option("sdpa", "Attention kernels: eager (transformers' reference code), sdpa "
                                              "(PyTorch's scaled_dot_product_attention) or flash_attention_2 (the "
                                              "flash-attn package, CUDA only).",
                                      choices=["eager", "sdpa", "flash_attention_2"])
    seed: int = option(0, "Seed for random-weight presets and training.")
    output_dir: str = option("results", "Results go to OUTPUT_DIR/RUN_NAME/.")
    run_name: str | None = option(None, "The run directory's name; by default technique-variant-model-timestamp.")
    overwrite: bool = option(False, "Replace an existing run directory of the same name (refused otherwise).")
    reference: str | None = option(None, "An earlier run directory (or its results.json) to compare predictions "
                                         "and logits with. Its speed-up was timed apart: never called "
                                         "significant (use --paired).")
    paired: bool = option(False, "Time the reference computation (fp32 eager, same model and questions) in a second "
                                 "process, its passes alternating with this run's, and compare with it: the speed-up "
                                 "and its interval come from the per-round ratios, which machine drift cannot fake.")
    min_duration: float | None = option(None, "The timed phase lasts at least this many seconds (by default 10 "
                                              "on CUDA, 0 on a CPU).")
    min_passes: int = option(3, "The timed phase runs at least this many passes over the questions (their spread "
                                "is printed); 0: no timed phase, timing comes from the cold pass (accuracy-only, "
                                "for long CPU runs).")
    wandb: str = option("auto", "auto logs online when an API key or login exists, otherwise offline.",
                        choices=["auto", "online", "offline", "disabled"])
    wandb_project: str = option("biogpt-pubmedqa", "The wandb project name.")
    # Not flags: set once by the script that builds the config.
    technique: str = field(default="baseline", metadata={"flag": None})
    options: Options = field(default_factory=Options, metadata={"flag": None})
    command: str = field(default_factory=lambda: " ".join([os.path.basename(sys.executable)] + sys.argv),
                         metadata={"flag": None})

    def __post_init__(self):
        for name in ("limit", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.min_passes < 0:
            raise UsageError(f"--min-passes must be >= 0, got {self.min_passes}")
        if self.min_duration is not None and self.min_duration < 0:
            raise UsageError(f"--min-duration must be >= 0, got {self.min_duration}")
        if self.paired and self.reference:
            raise UsageError("--paired times its own fp32-eager reference; drop --reference (or --paired)")
        if self.paired and self.min_passes == 0:
            raise UsageError("--paired pairs timed passes; --min-passes 0 has none")
        if self.min_passes == 0 and self.min_duration:
            raise UsageError("--min-passes 0 (no timed phase) contradicts --min-duration "
                             f"{self.min_duration:g}: drop one of them")

    @property
    def variant(self) -> str:
        return self.options.variant

    @property
    def dtype(self) -> str:
        return self.options.dtype

    def to_dict(self) -> dict:
        """What results.json and wandb record: every option, the technique's own ones under `options`."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**shared, "variant": self.variant, "dtype": self.dtype, "options": dataclasses.asdict(self.options)}


def _flag_type(f: dataclasses.Field):
    """The argparse type of a field: int or float from its annotation (`int`, `int | None`, or those as strings
    under `from __future__ import annotations`); None for strings."""
    kind = f.type
    if isinstance(kind, str):
        return {"int": int, "float": float}.get(kind.split("|")[0].strip())
    kind = (getattr(kind, "__args__", None) or (kind,))[0]
    return kind if kind in (int, float) else None


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One flag per field of the dataclass `cls`: --field-name, help and choices from the field's metadata."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if "flag" in meta and meta["flag"] is None:
            continue
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs = {"dest": f.name, "default": default, "help": meta.pop("help")}
        if f.type in (bool, "bool"):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.pop("type", None) or _flag_type(f)
        group.add_argument(flag, **kwargs, **meta)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, except where there is none to show."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def build_parser(description: str, options_cls=Options) -> argparse.ArgumentParser:
    """The shared options, then the technique's own; argparse refuses a technique flag that shadows a shared one."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_options(p, RunConfig, "shared evaluation options")
    if dataclasses.fields(options_cls):
        add_options(p, options_cls, "technique options")
    return p


def _pick(cls, values: dict):
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}


def parse_config(technique: str, options_cls=Options, argv=None, description: str | None = None) -> RunConfig:
    """Parse the command line into one frozen RunConfig (bad values: UsageError, exit 2)."""
    args = vars(build_parser(description or technique, options_cls).parse_args(argv))
    shared = {k: v for k, v in _pick(RunConfig, args).items() if k not in ("technique", "options", "command")}
    return RunConfig(**shared, technique=technique, options=options_cls(**_pick(options_cls, args)))


def _interrupted_while_starting(signum, frame):
    print("\ninterrupted; nothing written", file=sys.stderr, flush=True)
    os._exit(130)  # nothing to clean up: a script writes only once run_main runs it


def started_as_a_script() -> bool:
    """Whether this process is one of the repository's scripts starting (`python <folder>/<script>.py`,
    `python -m <folder>.<module>`), not a test runner, notebook or shell that imports the package."""
    root = Path(__file__).resolve().parents[1]
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and getattr(main, "__spec__", None) is None:
        return Path(path).resolve().is_relative_to(root)
    argv = getattr(sys, "orig_argv", [])
    return "-m" in argv[:-1] and (root / argv[argv.index("-m") + 1].split(".")[0] / "__init__.py").is_file()


def quiet_ctrl_c_while_starting() -> None:
    """Ctrl-C during a script's imports (seconds of torch and transformers): one line and exit code 130, as later
    (run_main), not an import traceback. Not where SIGINT is ignored (a background job) or handled by others."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler and started_as_a_script():
        signal.signal(signal.SIGINT, _interrupted_while_starting)


def run_main(main) -> None:
    """Run a script's main(); bad input ends it with one line on stderr and exit code 2, Ctrl-C with one line
    (what was kept, when the interrupted code said so in the KeyboardInterrupt) and exit code 130."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:  # from here on, what was kept is said
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print("\ninterrupted" + (f"; {e.args[0]}" if e.args else ""), file=sys.stderr)
        sys.exit(130)  # 128 + SIGINT, what a shell reports for a Ctrl-C


def _drop_log_records(logger: str, text: str) -> None:
    logging.getLogger(logger).addFilter(lambda record: text not in record.getMessage())


def _once_log_records(logger: str, text: str) -> None:
    said = False

    def first_only(record) -> bool:
        nonlocal said
        if text not in record.getMessage():
            return True
        first, said = not said, True
        return first
    logging.getLogger(logger).addFilter(first_only)


def quiet_third_party() -> None:
    """Drop start-up messages a user can do nothing about, by logger and text, so that every other warning
    still shows. Installed when `evaluation` is imported, before transformers imports torchao."""
    # torchao ships CUDA-only extensions (mxfp8, cutlass sm90a) that fail to load on other builds and devices;
    # what needs them says so itself when it runs
    _drop_log_records("torchao", "Failed to load")
    # bitsandbytes' int8 matmul on a CPU says it casts its inputs to float16 on every call of every Linear: once is news
    _once_log_records("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")
    # torchao registers its enums as pytree constants, which torch >= 2.13 deprecates (torchao's to fix)
    _drop_log_records("torch.utils._pytree", "is an Enum subclass and is now natively supported")
    # torch.export's own pytree code trips torch's LeafSpec deprecation (printed from copyreg during TVM export)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    # torch.ao's quantized tensors are deprecated (issue 184982); dynamic-int8 on a CPU runs on them until torchao's
    # CPU kernels catch up (quantization/README.md)
    warnings.filterwarnings("ignore", message=r"torch.quantize_per_tensor, torch.quantize_per_channel",
                            category=UserWarning)
