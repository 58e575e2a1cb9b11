"""A character-level tokenizer for the synthetic tasks, shared by rollout model and policy.

One id per character keeps the vocabulary tiny (about 50), so exact enumeration over it is
cheap in tests and a 0.1 M-parameter model can learn the tasks on a CPU. Rollout model and
policy use the same class and alphabet, so they share one vocabulary by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_ALPHABET", "CharTokenizer"]

DEFAULT_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +-*/=:,.?()"
"""Characters of every built-in task prompt and answer, plus a little headroom."""

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
    """Maps characters to ids; ids 0, 1, 2 are pad, bos, eos, then ``alphabet`` in order."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        """Build the vocabulary; ``alphabet`` must not repeat a character."""
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet repeats a character")
        self.alphabet = alphabet
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self._special = (PAD, BOS, EOS)
        self._char_to_id = {ch: i + len(self._special) for i, ch in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        """Number of ids (specials included); the models' output size."""
        return len(self._special) + len(self.alphabet)

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, as transformers tokenizers expose it (used by vocab checks)."""
        specials = {tok: i for i, tok in enumerate(self._special)}
        return {**specials, **self._char_to_id}

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        """Ids of ``text``; ``ValueError`` names the first character outside the alphabet."""
        try:
            ids = [self._char_to_id[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} in {text!r} is not in the tokenizer alphabet "
                f"{self.alphabet!r}"
            ) from None
        return [self.bos_token_id] * add_bos + ids + [self.eos_token_id] * add_eos

    def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True) -> str:
        """Text of ``ids``: special tokens dropped, cut at the first EOS when ``stop_at_eos``."""
        chars: list[str] = []
        n_special = len(self._special)
        for i in ids:
            if i == self.eos_token_id and stop_at_eos:
                break
            if n_special <= i < self.vocab_size:
                chars.append(self.alphabet[i - n_special])
        return "".join(chars)
