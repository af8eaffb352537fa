"""Incremental detokenization with stop strings (host only).

Decoding a request's whole output after every token costs O(n) per token, O(n^2) per request.
Here each new token decodes only a small window: the tokens since the last emitted text began
(``prefix_offset``) up to the newest. The window's text minus the text of its first part
(``prefix_offset:read_offset``, decoded alone the same way) is what the new tokens add; decoding a
window rather than the new token alone keeps what a token means in context (a leading space, a
byte of a multi-byte character). This is vLLM's ``detokenize_incrementally`` idea.

Worked example (byte-level tokens, "é" is the two bytes c3 a9)::

    tokens      h   i   c3  a9  !
    after h     window [h]          -> "h"        emit "h"      prefix=0 read=1
    after i     window [h i]        -> "hi"       emit "i"      prefix=1 read=2
    after c3    window [i c3]       -> "i\\ufffd" ends in U+FFFD: hold (an incomplete character)
    after a9    window [i c3 a9]    -> "ié"       emit "é"      prefix=2 read=4
    after !     window [c3 a9 !]    -> "é!"       emit "!"      prefix=4 read=5

Stop strings: the text is searched for them only from where a new match could start, and the
text handed out (`take_delta`) holds back a tail that could still grow into one: with stop
``"END"``, text ``"the EN"`` hands out ``"the "`` and keeps ``"EN"`` until the next token decides.
"""

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """The text of one sequence's generated tokens, kept up to date one step at a time.

    Args:
      tokenizer: a Hugging Face tokenizer (``decode``), or None (the text stays empty).
      stop: stop strings; `update` reports the first one found and cuts the text before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.text = ""  # decoded so far (cut before a stop string once one is found)
        self.prefix_offset = 0
        self.read_offset = 0
        self.num_emitted = 0  # characters of `text` handed out by take_delta
        self.stopped = False  # a stop string was found: the text is final

    def update(self, token_ids: list[int], *, check_stop: bool = True) -> bool:
        """Decodes the tokens added since the last call; True when a stop string appeared.

        Args:
          token_ids: all generated tokens so far (the previous call's plus new ones).
          check_stop: look for stop strings in the new text (False while short of min_tokens).
        """
        new_text = self._decode_window(token_ids, final=False)
        if not new_text:
            return False
        search_from = max(0, len(self.text) - self.max_stop_len + 1)
        self.text += new_text
        return check_stop and self._cut_at_stop(search_from)

    def flush(self, token_ids: list[int]) -> None:
        """Decodes what is still held back (an incomplete character) when the sequence ends."""
        if not self.stopped:
            self.text += self._decode_window(token_ids, final=True)

    def take_delta(self, finished: bool) -> str:
        """The text not handed out yet; while not finished, minus a possible stop-string start."""
        end = len(self.text) if finished else len(self.text) - self._stop_prefix_len()
        if end <= self.num_emitted:
            return ""
        delta = self.text[self.num_emitted : end]
        self.num_emitted = end
        return delta

    def _decode_window(self, token_ids: list[int], *, final: bool) -> str:
        if self.tokenizer is None or self.read_offset >= len(token_ids):
            return ""
        prefix = self._decode(token_ids[self.prefix_offset : self.read_offset])
        window = self._decode(token_ids[self.prefix_offset :])
        if not final and (len(window) <= len(prefix) or window.endswith(REPLACEMENT_CHAR)):
            return ""  # nothing new yet, or an incomplete character: wait for more tokens
        self.prefix_offset, self.read_offset = self.read_offset, len(token_ids)
        return window[len(prefix) :]

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _cut_at_stop(self, search_from: int) -> bool:
        found = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if not found:
            return False
        self.text = self.text[: min(found)]
        self.num_emitted = min(self.num_emitted, len(self.text))
        self.stopped = True
        return True

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the pending text that starts some stop string."""
        pending = len(self.text) - self.num_emitted
        for k in range(min(self.max_stop_len - 1, pending), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
