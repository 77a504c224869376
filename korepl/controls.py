"""What the writer's settings mean in one tokenizer's ids: stops, banned words, the newline policy.

Settings are texts ("</s>", "법률", "<unused0>"); the session needs ids.  `Vocabulary` holds the
facts about one tokenizer that this needs (its special tokens, whether it has a newline, how a word
start is marked) and `resolve` turns a Settings into `Controls` for it, refusing what the tokenizer
cannot do (a newline token it does not have) with a SettingError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from korepl.settings import SettingError, Settings


class Vocabulary:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.added = tokenizer.get_added_vocab()  # special tokens: </s>, </d>, <unused0> ...
        self.vocab = tokenizer.get_vocab()
        # KoGPT2's BPE has no newline: "\n" comes back as <unk> (SKT-AI/KoGPT2 #11).
        self.has_newline = "\n" in self.decode(self.encode("가\n가"))
        self.word_marker = self._word_marker()
        self.fingerprint: str | None = None  # filled in by korepl.store when first needed

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def shown(self, ids: Sequence[int], newline_token: str | None = None) -> str:
        """The text of `ids` as the writer sees it: a named newline token (the newline setting) shown as a newline."""
        text = self.decode(ids)
        return text.replace(newline_token + " ", "\n").replace(newline_token, "\n") if newline_token else text

    def token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def _word_marker(self) -> str | None:
        """The character a word-initial token starts with ('▁' for KoGPT2, 'Ġ' for byte-level BPE), if any."""
        ids = self.encode(" a")
        first = self.token(ids[0]) if ids else ""
        return first[0] if first and first[0] != "a" else None

    def spellings(self, word: str) -> set[tuple[int, ...]]:
        """The id sequences `word` is written with: at a word start (with the marker) and inside a word."""
        found = {tuple(self.encode(word)), tuple(self.encode(" " + word))}
        if self.word_marker == "▁":  # Metaspace prepends the marker; the bare model gives the inside-a-word form
            model = self.tokenizer.backend_tokenizer.model
            found.add(tuple(token.id for token in model.tokenize(word)))
        unk = self.tokenizer.unk_token_id
        return {ids for ids in found if ids and unk not in ids}


@dataclass(frozen=True)
class Controls:
    stop_ids: frozenset[int]  # special tokens that end a generation
    stop_texts: tuple[str, ...]  # any other stop entry, matched on the shown text
    ban_sequences: tuple[tuple[int, ...], ...]  # HF bad_words_ids
    ban_texts: tuple[str, ...]  # the banned words as text, a backstop for other spellings
    newline_for_model: str  # what a typed "\n" becomes in the model's text
    newline_token: str | None  # a named token standing for "\n", mapped back when shown
    suppress_ids: frozenset[int]  # special tokens the model may never write (HF suppress_tokens)
    keep_texts: tuple[str, ...] = ()  # stop right after these texts and keep them (a sentence end: 다.)


# How KoGPT2 chat fine-tunes mark a turn: <usr> the user's line <sys> the answer </s>.
CHAT_USER, CHAT_SYSTEM, CHAT_END = "<usr>", "<sys>", "</s>"


def readable(text: str) -> str:
    """The text as the writer reads it (screen, /context, export): chat markup stays in the ids, not here.

    A chat turn `<usr>line<sys>answer</s>` reads as "> line" on a line of its own, then the answer.
    """
    if CHAT_USER not in text:
        return text
    out = text.replace(CHAT_END + CHAT_USER, CHAT_USER).replace(CHAT_USER, "\n> ").replace(CHAT_SYSTEM, "\n")
    return out.removeprefix("\n")


def resolve(vocab: Vocabulary, settings: Settings) -> Controls:
    stop_ids = {vocab.added[s] for s in settings.stop if s in vocab.added}
    if settings.mode == "chat":
        if not all(t in vocab.added for t in (CHAT_USER, CHAT_SYSTEM, CHAT_END)):
            raise SettingError("mode chat needs the <usr>, <sys> and </s> tokens, which this model's vocabulary lacks")
        stop_ids.add(vocab.added[CHAT_END])
    stop_texts = tuple(s for s in settings.stop if s not in vocab.added)
    # A text in both lists is hidden: keeping it would show what the writer asked to hide.  A special
    # token is never written unless it is a stop, so kept it would never match (/stop keep refuses one).
    keep_texts = tuple(s for s in settings.stop_keep if s not in settings.stop and s not in vocab.added)
    sequences = sorted({ids for word in settings.ban for ids in vocab.spellings(word)})
    newline = settings.newline
    if newline == "auto":
        newline_for_model, token = ("\n" if vocab.has_newline else " "), None
    elif newline == "space":
        newline_for_model, token = " ", None
    elif newline in vocab.vocab:
        newline_for_model, token = newline, newline
    else:
        raise SettingError(f"newline must be auto, space or a token of this model's vocabulary "
                           f"('{newline}' is not one)")
    # Every special token that no setting asks for (<unk>, <pad>, <mask>, <usr>, <unused…>) is never
    # written: the model may not pick it, and /peek does not offer it.
    special = set(vocab.added.values()) | set(vocab.tokenizer.all_special_ids)
    allowed = stop_ids | ({vocab.added[token]} if token in vocab.added else set())
    return Controls(frozenset(stop_ids), stop_texts, tuple(sequences), settings.ban, newline_for_model, token,
                    frozenset(special - allowed), keep_texts)
