"""Text data, all real and reproducible without a download, and the BPE tokenizer.

- Language identification: sentences from Faker's per-locale word lists (12 languages, fixed
  locale list and seeds); the test split is drawn with another seed than train/val.
- Code summarization: functions of this interpreter's standard library, parsed with `ast`;
  input = the function's source without its docstring (ast.unparse), target = the docstring's
  first sentence. Deduplicated, and split by module so test functions come from unseen modules.
  Training may add the functions of installed scientific packages (train split only).
  The model's view of a source (identifiers as words) is `models.text_input.code_input`.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# label → Faker locale; each has its own lorem word list (others fall back to Latin)
LANGUAGES = {
    "cs": "cs_CZ",
    "da": "da_DK",
    "de": "de_DE",
    "el": "el_GR",
    "en": "en_US",
    "es": "es_ES",
    "fr": "fr_FR",
    "it": "it_IT",
    "nl": "nl_NL",
    "pl": "pl_PL",
    "ru": "ru_RU",
    "uk": "uk_UA",
}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SKIPPED_PARTS = {"test", "tests", "idlelib", "turtledemo", "site-packages", "__pycache__"}
# vendored copies of other projects (some are stdlib backports: they could leak test modules)
VENDORED_PARTS = {"_vendor", "vendor", "vendored", "externals", "_externals"}
MAX_SOURCE_CHARS = 2000
SUMMARY_WORDS = (3, 24)
# installed with the train extra (directly or as a dependency); their functions only ever
# join the training split, so the held-out split stays "stdlib packages never seen"
EXTRA_PACKAGES = ("numpy", "scipy", "sklearn", "matplotlib", "pandas")


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels into `label_names`."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


def language_split(split: str, per_language: int) -> LabelledTexts:
    """`per_language` sentences of 3-14 words per language, seeded by the split's name."""
    from faker import Faker

    seed = SPLIT_SEEDS[split]
    names = sorted(LANGUAGES)
    rng = random.Random(seed)
    texts, labels = [], []
    for index, label in enumerate(names):
        fake = Faker(LANGUAGES[label])
        fake.seed_instance(seed * 1000 + index)
        for _ in range(per_language):
            texts.append(fake.sentence(nb_words=rng.randint(3, 14), variable_nb_words=False))
            labels.append(index)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return LabelledTexts([texts[i] for i in order], [labels[i] for i in order], names)


@dataclass(frozen=True)
class CodeExample:
    """One stdlib function: where it lives, its source without docstring, its summary."""

    module: str
    name: str
    source: str
    summary: str

    def baseline(self) -> str:
        """The copy-the-function-name baseline: `get_close_matches` → "get close matches"."""
        return self.name.replace("_", " ").strip()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence: first paragraph, lines joined, cut after the first '. '."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    match = re.search(r"[.!?](\s|$)", paragraph)
    return paragraph[: match.start() + 1] if match else paragraph


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def module_examples(path: Path, module: str) -> list[CodeExample]:
    """Functions with a docstring in one file (unparseable files give none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    examples = []
    for node in _functions(tree):
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        summary = first_sentence(docstring)
        if not SUMMARY_WORDS[0] <= len(summary.split()) <= SUMMARY_WORDS[1]:
            continue
        body = node.body[1:] or [ast.Pass()]
        stripped = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": body})
        source = ast.unparse(ast.fix_missing_locations(stripped))[:MAX_SOURCE_CHARS]
        examples.append(CodeExample(module, node.name, source, summary))
    return examples


def stdlib_modules(root: Path | None = None) -> list[tuple[Path, str]]:
    """(file, dotted module name) of the standard library's Python files, sorted."""
    return python_files(root or stdlib_root())


def python_files(root: Path, prefix: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
    """(file, dotted module name) of the Python files under `root`, sorted; tests, vendored
    copies and caches left out."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parts = set(relative.parts)
        if (SKIPPED_PARTS | VENDORED_PARTS) & parts or relative.name.startswith("test_"):
            continue
        found.append((path, ".".join((*prefix, *relative.with_suffix("").parts))))
    return found


def package_examples(packages: Sequence[str]) -> list[CodeExample]:
    """Functions of installed packages (those not installed are skipped), sorted by module."""
    site = Path(sysconfig.get_paths()["purelib"])
    examples = []
    for package in packages:
        if (site / package).is_dir():
            for path, module in python_files(site / package, (package,)):
                examples += module_examples(path, module)
    return examples


def split_of(module: str) -> str:
    """test (10%), val (5%) or train, by a stable hash of the top-level package."""
    bucket = int(hashlib.sha256(module.split(".")[0].encode()).hexdigest(), 16) % 20
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def code_splits(
    limit: int | None = None, extra_packages: Sequence[str] = ()
) -> dict[str, list[CodeExample]]:
    """Deduplicated stdlib functions split by module; `limit` caps each split (quick runs).

    `extra_packages`' functions join the training split only, minus any whose source or
    (name, summary) a val/test function has: a copy of a held-out function must not leak.
    """
    splits: dict[str, list[CodeExample]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for path, module in stdlib_modules():
        if limit is not None and all(len(examples) >= limit for examples in splits.values()):
            break  # a quick run needs only the first few modules of each split
        for example in module_examples(path, module):
            if example.source in seen:
                continue
            seen.add(example.source)
            splits[split_of(module)].append(example)
    if limit is not None:
        splits = {name: examples[:limit] for name, examples in splits.items()}
    held_out = {(e.name, e.summary) for name in ("val", "test") for e in splits[name]}
    for example in package_examples(extra_packages):
        if example.source in seen or (example.name, example.summary) in held_out:
            continue
        seen.add(example.source)
        splits["train"].append(example)
    return splits


def train_tokenizer(texts: Iterable[str], vocab_size: int, specials: list[str]) -> object:
    """A byte-level BPE tokenizer (every string round-trips; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
