#!/usr/bin/env python3
"""Build korepl's small Korean demo model (a KoGPT2-kind tokenizer + tiny GPT-2).

No model hub is reachable where korepl is built and tested, so the project
trains its own stand-in for ``skt/kogpt2-base-v2``: same kind of tokenizer
(Metaspace BPE, no newline token, KoGPT2's special tokens at KoGPT2's ids),
same window (1024 learned absolute positions), same special-token ids in the
config, but only a few million parameters, trained for a few CPU minutes.
It writes Korean-looking text; it is not a good language model.

Sources (names, licences and character counts also go into training.json):

* ``konlpy-kolaw``: ``konlpy/data/corpus/kolaw/constitution.txt``, the
  Constitution of the Republic of Korea (대한민국헌법), shipped inside the konlpy
  package (konlpy 0.6.0, GPL-3.0-or-later per its package metadata). Statutes
  are not protected by copyright in Korea (Copyright Act, Article 7), so the
  text itself is a public work.
* ``konlpy-kobill``: ``konlpy/data/corpus/kobill/*.txt``, ten bills of the
  National Assembly of Korea (18th assembly, bill numbers 1809890-1809899),
  shipped inside konlpy (GPL-3.0-or-later per konlpy's metadata; the bills
  are official legislative documents, cf. Copyright Act Article 7).
* ``libreoffice-help-ko`` (optional, ``--extra-dir``): the Korean LibreOffice
  help pages from Debian's package ``libreoffice-help-ko``, unpacked without
  installing it::

      apt-get update
      mkdir -p /tmp/x && cd /tmp/x && apt-get download libreoffice-help-ko
      dpkg -x libreoffice-help-ko_*.deb out/

  and passed as ``--extra-dir /tmp/x/out``. Licence MPL-2.0 (some files carry
  Apache-2.0 material), per the package's ``usr/share/doc/libreoffice-help-ko/
  copyright``. Plain text is pulled out of the HTML with the stdlib
  ``html.parser``; only lines whose letters are at least half Hangul are kept,
  and repeated lines are kept once.

Text handling: NFC normalisation of the source text, whitespace collapsed,
paragraphs kept apart in the raw text. KoGPT2's BPE has no newline token, so
neither has this one: a document is fed to the tokenizer trainer and to the
model as its paragraphs joined by single spaces, and documents are separated
by ``</s>`` in the training stream. The last 5% (by characters) of each
source's paragraphs is held out for evaluation.

Tokenizer: ``tokenizers`` BPE with ``unk_token="<unk>"``, no normalizer (as
KoGPT2: what the user types is what the model sees; the training text itself
is NFC), Metaspace pre-tokenizer and decoder (replacement '▁',
prepend_scheme "always", split=True), no post-processor (nothing is added on
encode). Special tokens at KoGPT2's ids, from korepl's own table
(``korepl.loading.KOGPT2_TOKEN_IDS``): <s>=0 </s>=1 <usr>=2 <pad>=3 <sys>=4
<unk>=5 <mask>=6 <d>=7 </d>=8 <unused0..99>=9..108.

Model: GPT2LMHeadModel, n_positions=1024, gelu_new, tied embeddings,
bos=eos=1, pad=3. Training windows are short (``--seq-len``) but each one is
placed at a random offset inside the 1024 positions (a quarter of them at 0),
so every position embedding gets trained and text past the first window
stays Korean-looking. Saved in float16 with safetensors.

The build runs in phases, each a function from what the one before made to
what the next needs: text (sources -> training and held-out documents),
tokenizer (documents -> a checked tokenizer in the output folder, and the
token streams), model (a fresh GPT-2), training, evaluation (held-out loss,
then the float16 save and sample continuations) and metadata (README.md and
training.json beside the weights).

Usage (from the repository root, in korepl's virtual environment with konlpy
added: ``.venv/bin/pip install konlpy``)::

    .venv/bin/python scripts/build_demo_model.py --extra-dir /tmp/x/out --minutes 6

``--dry-run`` checks the whole pipeline in seconds instead: a tiny model,
three steps, written to a new temporary folder (or ``--out``), never over
the shipped model unless ``--out`` names it::

    .venv/bin/python scripts/build_demo_model.py --dry-run
"""

from __future__ import annotations

import argparse
import html.parser
import importlib.resources
import json
import math
import platform
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's korepl, whatever else the environment has

from korepl.loading import DEMO_MODEL_DIR, KOGPT2_SPECIAL_TOKENS, KOGPT2_TOKEN_IDS  # noqa: E402
from korepl.machine import cpu_model  # noqa: E402

PROMPTS = ["대한민국의 모든 국민은", "이 법은", "수강신청에서 원하는 강의를 신청하기 위해서는"]
BOS_ID, EOS_ID, PAD_ID, UNK_ID, MASK_ID = (
    KOGPT2_TOKEN_IDS[KOGPT2_SPECIAL_TOKENS[role]]
    for role in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
)
N_POSITIONS = 1024  # KoGPT2's window
SEED = 0
# --dry-run: every option it names takes this value unless given on the command line.
DRY_RUN = dict(steps=3, n_embd=32, n_layer=1, n_head=2, seq_len=32, batch_size=2, warmup=2, log_every=1)


# --------------------------------------------------------------------------- text


def is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def hangul_share(line: str) -> tuple[int, float]:
    """(number of Hangul characters, Hangul share among letters)."""
    letters = [c for c in line if c.isalpha()]
    n = sum(1 for c in letters if is_hangul(c))
    return n, (n / len(letters) if letters else 0.0)


def clean_line(line: str) -> str:
    """NFC, every kind of space (tabs, NBSP, form feed …) to one plain space."""
    line = unicodedata.normalize("NFC", line)
    line = "".join(" " if (c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs")) else c for c in line)
    return re.sub(r" {2,}", " ", line).strip()


def display_width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


@dataclass
class Document:
    name: str
    paragraphs: list[str]


@dataclass
class Source:
    name: str
    licence: str
    origin: str
    documents: list[Document] = field(default_factory=list)

    def chars(self) -> int:
        return sum(len(p) for d in self.documents for p in d.paragraphs)


def konlpy_corpus_dir() -> Path:
    return Path(str(importlib.resources.files("konlpy") / "data" / "corpus"))


def konlpy_licence() -> str:
    from importlib.metadata import metadata

    meta = metadata("konlpy")
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return f"konlpy {meta['Version']}: {meta.get('License', '?')} ({', '.join(classifiers) or 'no classifier'}; package metadata)"


def read_constitution(path: Path) -> Document:
    """One paragraph per non-empty line: the file already has an article paragraph per line."""
    paras = [clean_line(l) for l in path.read_text(encoding="utf-8").splitlines()]
    return Document(path.name, [p for p in paras if p])


PAGE_NUMBER = re.compile(r"^-\s*\d+\s*-$")
ITEM_START = re.compile(r"^(제\s*\d+\s*(조|항|호|장|절)|[①-⑳]|\d+\s*[.)]|[가-하]\s*[.)]|부\s*칙|「)")


def read_bill(path: Path) -> Document:
    """Undo the PDF hard wrap of a kobill text.

    Every line sits between blank lines. A line that filled the page width
    (display width ≥ 56) continues on the next one unless that one starts
    indented or with an item marker; the break was inside a word when the
    wide line did not end in a space.
    """
    paras: list[str] = []
    cur = ""
    prev_full = False
    prev_space = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        raw = raw.replace("\x0c", "")
        text = clean_line(raw)
        if not text or PAGE_NUMBER.match(text):
            continue
        starts_new = raw[:1].isspace() or bool(ITEM_START.match(text))
        if cur and prev_full and not starts_new:
            cur = cur + (" " if prev_space else "") + text
        else:
            if cur:
                paras.append(cur)
            cur = text
        stripped_raw = raw.rstrip("\n")
        prev_full = display_width(stripped_raw.strip()) >= 56
        prev_space = stripped_raw.endswith((" ", "\t", "\u3000"))
    if cur:
        paras.append(cur)
    return Document(path.name, paras)


BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "tr", "div", "br", "dt", "dd", "table", "ul", "ol", "pre"}
SKIP_TAGS = {"script", "style", "header", "footer", "aside", "noscript", "nav", "button", "label", "pre", "code"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class HelpPageText(html.parser.HTMLParser):
    """Text lines of one LibreOffice help page's body (<div id="DisplayArea">), one per block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._buf: list[str] = []
        self._open: list[tuple[str, bool]] = []  # elements open inside DisplayArea: (tag, skipped)

    def _flush(self) -> None:
        if self._buf:
            self.lines.append("".join(self._buf))
            self._buf = []

    def _skipping(self) -> bool:
        return any(skipped for _, skipped in self._open)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if not self._open:
            if tag == "div" and a.get("id") == "DisplayArea":
                self._open.append((tag, False))
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag not in VOID_TAGS:
            self._open.append((tag, tag in SKIP_TAGS or a.get("class") in ("debug", "bug")))

    def handle_endtag(self, tag):
        if not self._open or tag in VOID_TAGS:
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if any(t == tag for t, _ in self._open):  # tolerate unclosed children
            while self._open and self._open.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self._open and not self._skipping():
            self._buf.append(data)

    def close(self):
        super().close()
        self._flush()


def read_libreoffice_help(extra_dir: Path, min_hangul: int, min_share: float) -> list[Document]:
    pages = sorted(p for p in extra_dir.rglob("*.html") if "/help/" in p.as_posix())
    seen: set[str] = set()
    docs = []
    for page in pages:
        parser = HelpPageText()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        kept = []
        for line in parser.lines:
            line = clean_line(line)
            n, share = hangul_share(line)
            if n < min_hangul or share < min_share or line in seen:
                continue
            seen.add(line)
            kept.append(line)
        if kept:
            docs.append(Document(page.relative_to(extra_dir).as_posix(), kept))
    return docs


def libreoffice_licence(extra_dir: Path) -> str:
    copyright_file = next(iter(extra_dir.rglob("doc/libreoffice-help-ko/copyright")), None)
    if copyright_file is None:
        return "MPL-2.0 (copyright file not found under --extra-dir; Debian states MPL-2.0)"
    text = copyright_file.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^Files: \*\n(?:.*\n)*?License: (\S+)", text, re.M)
    lic = m.group(1) if m else "?"
    extra = " (some files include Apache-2.0 material)" if "Apache" in text else ""
    return f"{lic}{extra}, per {copyright_file.relative_to(extra_dir).as_posix()}"


def gather_sources(extra_dir: Path | None) -> list[Source]:
    corpus = konlpy_corpus_dir()
    lic = konlpy_licence()
    sources = [
        Source(
            "konlpy-kolaw",
            f"{lic}; the Constitution of the Republic of Korea is a public work (Korean Copyright Act art. 7)",
            "konlpy/data/corpus/kolaw/constitution.txt",
            [read_constitution(corpus / "kolaw" / "constitution.txt")],
        ),
        Source(
            "konlpy-kobill",
            f"{lic}; official bills of the National Assembly of Korea (official legislative documents, cf. Korean Copyright Act art. 7)",
            "konlpy/data/corpus/kobill/*.txt",
            [read_bill(p) for p in sorted((corpus / "kobill").glob("*.txt"))],
        ),
    ]
    if extra_dir is not None:
        docs = read_libreoffice_help(extra_dir, min_hangul=4, min_share=0.5)
        if not docs:
            sys.exit(f"--extra-dir {extra_dir}: no Korean help pages found (expected usr/share/libreoffice/help/ko/**.html)")
        sources.append(
            Source(
                "libreoffice-help-ko",
                libreoffice_licence(extra_dir),
                "Debian package libreoffice-help-ko, usr/share/libreoffice/help/ko/**/*.html",
                docs,
            )
        )
    return sources


def split_source(src: Source, heldout_fraction: float) -> tuple[list[Document], list[Document]]:
    """The last `heldout_fraction` of a source's characters (whole paragraphs) is held out."""
    total = src.chars()
    cut = total * (1 - heldout_fraction)
    train, held = [], []
    seen = 0
    for doc in src.documents:
        tr, he = [], []
        for p in doc.paragraphs:
            (tr if seen < cut else he).append(p)
            seen += len(p)
        if tr:
            train.append(Document(doc.name, tr))
        if he:
            held.append(Document(doc.name, he))
    return train, held


def as_model_text(doc: Document) -> str:
    """What the model sees of a document: no newlines, paragraphs joined by a space."""
    return " ".join(doc.paragraphs)


@dataclass
class Corpus:
    """The text phase's output: documents to train and to evaluate on, and training.json's word on each source."""

    train: list[Document]
    heldout: list[Document]
    sources: list[dict]


def read_corpus(extra_dir: Path | None, heldout_fraction: float) -> Corpus:
    """Phase 1, text: every source read, cleaned and split into training and held-out documents."""
    corpus = Corpus([], [], [])
    for src in gather_sources(extra_dir):
        tr, he = split_source(src, heldout_fraction)
        corpus.train += tr
        corpus.heldout += he
        tr_chars = sum(len(p) for d in tr for p in d.paragraphs)
        he_chars = sum(len(p) for d in he for p in d.paragraphs)
        hangul = sum(1 for d in src.documents for p in d.paragraphs for c in p if is_hangul(c))
        corpus.sources.append(
            dict(
                name=src.name,
                origin=src.origin,
                licence=src.licence,
                documents=len(src.documents),
                paragraphs=sum(len(d.paragraphs) for d in src.documents),
                characters=src.chars(),
                hangul_characters=hangul,
                train_characters=tr_chars,
                heldout_characters=he_chars,
            )
        )
        print(f"[text] {src.name}: {len(src.documents)} docs, {src.chars():,} chars "
              f"({hangul:,} Hangul), train {tr_chars:,} / held out {he_chars:,}", flush=True)
    return corpus


# ---------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, min_char_count: int):
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    chars = Counter(c for t in texts for c in t if c != " ")
    alphabet = sorted(c for c, n in chars.items() if n >= min_char_count)
    tok = Tokenizer(models.BPE(unk_token=KOGPT2_SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = None
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=sorted(KOGPT2_TOKEN_IDS, key=KOGPT2_TOKEN_IDS.get),  # each at its KoGPT2 id
        limit_alphabet=len(alphabet) + 1,  # '▁' joins the alphabet too
        initial_alphabet=alphabet + ["▁"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok, len(alphabet), len(chars)


def check_tokenizer(out: Path):
    from transformers import PreTrainedTokenizerFast

    tk = PreTrainedTokenizerFast.from_pretrained(out, **KOGPT2_SPECIAL_TOKENS)
    got = {t: tk.convert_tokens_to_ids(t) for t in KOGPT2_TOKEN_IDS}
    differ = [(t, got[t], i) for t, i in KOGPT2_TOKEN_IDS.items() if got[t] != i]
    assert not differ, f"special token ids differ: {differ}"
    assert (tk.bos_token_id, tk.eos_token_id, tk.pad_token_id, tk.unk_token_id, tk.mask_token_id) == (
        BOS_ID, EOS_ID, PAD_ID, UNK_ID, MASK_ID)
    pieces = tk.tokenize("수강신청에서 원하는 강의를")
    assert pieces and pieces[0].startswith("▁"), pieces
    assert tk("이 법은")["input_ids"][0] != BOS_ID, "the tokenizer must not add a BOS on encode"
    nl_ids = tk("\n", add_special_tokens=False)["input_ids"]
    assert all("\n" not in tk.convert_ids_to_tokens(i) for i in nl_ids), nl_ids
    assert not any("\n" in t for t in tk.get_vocab()), "a vocabulary entry contains a newline"
    probes = {
        s: tk.convert_ids_to_tokens(tk(s, add_special_tokens=False)["input_ids"])
        for s in ["수강신청에서 원하는 강의를", "첫 줄\n둘째 줄", "\n", "좋아요 😀", "KoGPT2 모델"]
    }
    return tk, probes


@dataclass
class BuiltTokenizer:
    """The tokenizer phase's output: the tokenizer as saved and loaded back, its alphabet, and the token streams."""

    tk: object  # a transformers PreTrainedTokenizerFast, loaded back from the output folder
    alphabet_size: int
    distinct_chars: int
    probes: dict[str, list[str]]
    train_stream: torch.Tensor
    heldout_stream: torch.Tensor
    unk_rate: float  # share of <unk> in the training stream


def build_tokenizer(corpus: Corpus, vocab_size: int, min_char_count: int, out: Path) -> BuiltTokenizer:
    """Phase 2, tokenizer: trained on the training text, saved into a fresh `out` (replaced), checked, then used
    to encode the training and held-out documents."""
    from transformers import PreTrainedTokenizerFast

    started = time.time()
    train_texts = [as_model_text(d) for d in corpus.train]
    tok, alphabet_size, distinct_chars = train_tokenizer(train_texts, vocab_size, min_char_count)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, **KOGPT2_SPECIAL_TOKENS).save_pretrained(out)
    tk, probes = check_tokenizer(out)
    print(f"[tokenizer] vocab {len(tk)} (alphabet {alphabet_size} of {distinct_chars} distinct characters) "
          f"in {time.time() - started:.1f}s", flush=True)
    for s, p in probes.items():
        print(f"[tokenizer] {s!r} -> {p}", flush=True)

    train_stream = encode_stream(tk, corpus.train)
    heldout_stream = encode_stream(tk, corpus.heldout)
    unk_rate = (train_stream == tk.unk_token_id).float().mean().item()
    print(f"[data] train {len(train_stream):,} tokens, held out {len(heldout_stream):,} tokens, "
          f"chars/token {sum(len(t) for t in train_texts) / len(train_stream):.2f}, unk {unk_rate:.4%}", flush=True)
    return BuiltTokenizer(tk, alphabet_size, distinct_chars, probes, train_stream, heldout_stream, unk_rate)


def encode_stream(tk, docs: list[Document]) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids.extend(tk(as_model_text(doc), add_special_tokens=False)["input_ids"])
        ids.append(tk.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


# -------------------------------------------------------------------------- model


def new_model(vocab_size: int, n_embd: int, n_layer: int, n_head: int, dropout: float):
    """Phase 3, model: a fresh GPT-2 with KoGPT2's window and special-token ids (weights from torch's seeded RNG)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=N_POSITIONS,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    print(f"[model] {parameter_count(model):,} parameters", flush=True)
    return model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------- training


@dataclass
class Training:
    """The training phase's output (the model itself is trained in place)."""

    steps: int
    seconds: float
    loss: float  # mean over the last 50 steps


def train(model, stream: torch.Tensor, args: argparse.Namespace) -> Training:
    """Phase 4, training: a fixed step count (--steps), or a time budget (--minutes) turned into a step count
    after timing the first ten steps."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(SEED)
    n_positions = model.config.n_positions

    budget_s = args.minutes * 60
    total_steps = args.steps if args.steps else 10**9
    model.train()
    step = 0
    losses: list[float] = []
    t_train = time.time()
    while step < total_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, min(total_steps, 10**6), args.lr, args.warmup)
        x, y, pos = sample_batch(stream, args.batch_size, args.seq_len, n_positions, gen)
        logits = model(input_ids=x, position_ids=pos).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        elapsed = time.time() - t_train
        if not args.steps and step == 10:
            total_steps = max(20, int(budget_s / (elapsed / 10)))
            print(f"[train] {elapsed / 10:.3f}s/step -> {total_steps} steps for {args.minutes} min", flush=True)
        if step % args.log_every == 0 or step == total_steps:
            recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
            print(f"[train] step {step}/{total_steps} loss {recent:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{elapsed:.0f}s", flush=True)
        if not args.steps and elapsed > budget_s * 1.1:  # machine got slower: stop anyway
            print(f"[train] time budget exceeded, stopping at step {step}", flush=True)
            break
    tail = losses[-50:]
    return Training(steps=step, seconds=time.time() - t_train, loss=sum(tail) / len(tail))


def sample_batch(stream: torch.Tensor, batch: int, seq_len: int, n_positions: int, gen: torch.Generator):
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=gen)
    x = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
    offsets = torch.randint(0, n_positions - seq_len + 1, (batch, 1), generator=gen)
    offsets[torch.rand(batch, 1, generator=gen) < 0.25] = 0
    pos = offsets + torch.arange(seq_len)
    return x[:, :-1], x[:, 1:], pos


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Held-out loss per token of the float32 weights, in non-overlapping windows starting at position 0."""

    tokens: int
    loss: float  # windows of --seq-len
    loss_1024: float  # windows of the whole 1024 positions


def evaluate(model, stream: torch.Tensor, seq_len: int) -> Evaluation:
    """Phase 5a, evaluation: the held-out loss, before the float16 save."""
    loss, tokens = heldout_loss(model, stream, seq_len)
    loss_1024, _ = heldout_loss(model, stream, model.config.n_positions)
    print(f"[eval] held-out loss {loss:.3f} ppl {math.exp(loss):.1f} over {tokens:,} tokens "
          f"(windows of {seq_len}); windows of 1024: loss {loss_1024:.3f} ppl {math.exp(loss_1024):.1f}",
          flush=True)
    return Evaluation(tokens, loss, loss_1024)


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, window: int) -> tuple[float, int]:
    """Mean per-token loss over the whole stream in non-overlapping windows (positions from 0)."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(stream) - 1, window):
        chunk = stream[s : s + window + 1]
        if len(chunk) < 2:
            break
        x, y = chunk[:-1].unsqueeze(0), chunk[1:].unsqueeze(0)
        logits = model(input_ids=x).logits
        total += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count, count


def save_model(model, out: Path) -> None:
    """The weights in float16 (the model is converted in place), with a generation config of KoGPT2's ids."""
    from transformers import GenerationConfig

    model.half()
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(out, safe_serialization=True)


def sample_continuations(out: Path, tk) -> list[dict]:
    """Phase 5b: the saved weights loaded back as float32, as korepl loads them, and asked to continue PROMPTS."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reloaded.eval()
    assert reloaded.get_input_embeddings().weight.dtype == torch.float32
    assert reloaded.config.n_positions == N_POSITIONS and reloaded.config.pad_token_id == PAD_ID
    samples = []
    for prompt in PROMPTS:
        enc = tk(prompt, return_tensors="pt")
        with torch.no_grad():
            gen_ids = reloaded.generate(
                **enc, do_sample=False, repetition_penalty=2.0, max_new_tokens=40
            )
        cont = tk.decode(gen_ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
        samples.append(dict(prompt=prompt, continuation=cont))
        print(f"[sample] {prompt} ⟶ {cont}", flush=True)
    return samples


# ----------------------------------------------------------------------- metadata


def describe(args: argparse.Namespace, argv, corpus: Corpus, built: BuiltTokenizer, model, training: Training,
             evaluation: Evaluation, samples: list[dict]) -> dict:
    """Phase 6a, metadata: everything training.json records of how the model was made."""
    import transformers

    loss = evaluation.loss
    return dict(
        what="korepl demo model: KoGPT2-kind tokenizer and a tiny GPT-2 trained for a few CPU minutes; "
        "Korean-looking text, not a useful language model",
        command="python scripts/build_demo_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        sources=corpus.sources,
        text_policy="NFC, whitespace collapsed; newlines become spaces (no newline token); </s> between documents; "
        f"last {args.heldout_fraction:.0%} of each source's characters held out",
        tokenizer=dict(
            kind="BPE (tokenizers), Metaspace '▁' prepend_scheme=always split=True, no normalizer, no post-processor",
            vocab_size=len(built.tk),
            alphabet_size=built.alphabet_size,
            distinct_training_characters=built.distinct_chars,
            min_char_count=args.min_char_count,
            train_unk_rate=round(built.unk_rate, 6),
            probes=built.probes,
        ),
        model=dict(
            n_positions=N_POSITIONS, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
            activation_function="gelu_new", tie_word_embeddings=True, saved_dtype="float16",
        ),
        vocab_size=len(built.tk),
        parameters=parameter_count(model),
        training=dict(
            steps=training.steps,
            seconds=round(training.seconds, 1),
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            schedule="linear warmup, cosine decay to 10%",
            weight_decay=args.weight_decay,
            dropout=args.dropout,
            position_offsets="each window at a random offset in 0..1024-seq_len (a quarter at 0)",
            train_tokens=len(built.train_stream),
            tokens_seen=training.steps * args.batch_size * args.seq_len,
            seed=SEED,
            threads=args.threads,
        ),
        cpu=cpu_model(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        train_loss_last50_steps=round(training.loss, 4),
        heldout=dict(
            tokens=evaluation.tokens,
            window=args.seq_len,
            loss=round(loss, 4),
            perplexity=round(math.exp(loss), 2),
            loss_window_1024=round(evaluation.loss_1024, 4),
            perplexity_window_1024=round(math.exp(evaluation.loss_1024), 2),
            note="per token, float32 weights before the float16 save, non-overlapping windows starting at position 0",
        ),
        samples=dict(settings="greedy, repetition_penalty=2.0, max_new_tokens=40, float16 weights loaded as float32", items=samples),
    )


def write_metadata(out: Path, meta: dict) -> float:
    """Phase 6b: README.md and training.json (which records the folder's final size) beside the weights;
    every file made readable by all. Returns the folder's size in MB."""
    write_readme(out, meta)
    meta_path = out / "training.json"
    meta["folder_bytes"] = 0
    for _ in range(3):  # the file's own size is part of the folder size
        meta_path.write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        meta["folder_bytes"] = folder_bytes(out)
    meta_path.write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for f in out.iterdir():
        f.chmod(0o644)  # save_pretrained writes the weights 0600
    return folder_bytes(out) / 1e6


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_readme(out: Path, meta: dict) -> None:
    src_lines = "\n".join(
        f"- `{s['name']}` ({s['origin']}): {s['characters']:,} characters. Licence: {s['licence']}."
        for s in meta["sources"]
    )
    h = meta["heldout"]
    text = f"""# korepl demo model

A tiny stand-in for `skt/kogpt2-base-v2`, for tests and offline demos: a KoGPT2-kind tokenizer
(Metaspace BPE, no newline token, KoGPT2's special tokens at KoGPT2's ids, bos = eos = `</s>` = 1,
`<pad>` = 3) and a {meta['parameters']:,}-parameter GPT-2 with KoGPT2's 1024-position window
({meta['model']['n_layer']} layers, {meta['model']['n_head']} heads, {meta['model']['n_embd']} wide,
vocabulary {meta['vocab_size']:,}), stored in float16; load it with `dtype=torch.float32`.
It writes Korean-looking text, not sensible text (held-out perplexity {h['perplexity']} per token).

Built by `{meta['command']}` ({meta['training']['steps']} steps,
{meta['training']['seconds']:.0f} s on {meta['cpu']}); see `scripts/build_demo_model.py` and
`training.json` for every setting, the losses and sample continuations.

Training text:
{src_lines}

The trained weights derive from this text; KoGPT2 itself (CC-BY-NC-SA 4.0) is not used here.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder, replaced (default korepl/demo_model; with --dry-run a new temporary folder)")
    ap.add_argument("--extra-dir", type=Path, default=None, help="unpacked libreoffice-help-ko .deb (dpkg -x … DIR)")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget (ignored with --steps)")
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead of a time budget")
    ap.add_argument("--vocab-size", type=int, default=4096, help="total vocabulary, specials included")
    ap.add_argument("--min-char-count", type=int, default=2, help="characters rarer than this in training text become <unk>")
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--heldout-fraction", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--max-mb", type=float, default=6.0, help="fail if the saved folder is larger than this")
    dry = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in DRY_RUN.items())
    ap.add_argument("--dry-run", action="store_true",
                    help=f"check the pipeline in seconds: {dry} (each unless given), into a new temporary folder "
                    "unless --out is given")
    args = ap.parse_args(argv)
    if args.dry_run:  # parsed again, so that options given on the command line still win
        ap.set_defaults(**DRY_RUN)
        args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="korepl-demo-dry-run-")) if args.dry_run else DEMO_MODEL_DIR
    args.out = args.out.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    out: Path = args.out

    corpus = read_corpus(args.extra_dir, args.heldout_fraction)
    built = build_tokenizer(corpus, args.vocab_size, args.min_char_count, out)
    model = new_model(len(built.tk), args.n_embd, args.n_layer, args.n_head, args.dropout)
    training = train(model, built.train_stream, args)
    evaluation = evaluate(model, built.heldout_stream, args.seq_len)
    save_model(model, out)
    samples = sample_continuations(out, built.tk)
    meta = describe(args, argv, corpus, built, model, training, evaluation, samples)
    size_mb = write_metadata(out, meta)

    print(f"[done] {out} {size_mb:.2f} MB, {meta['parameters']:,} params, {training.steps} steps in "
          f"{training.seconds:.0f}s, held-out ppl {math.exp(evaluation.loss):.1f}", flush=True)
    if size_mb > args.max_mb:
        print(f"[error] folder is {size_mb:.2f} MB > --max-mb {args.max_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
