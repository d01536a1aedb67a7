"""`text`: string tasks, answering exactly like the Rust tasks/text module,
plus two that lean on Python's standard library (re, collections) and
`fib`, the CPU-bound task bench/compare runs on Celery from the same source."""

import hashlib
import re
from collections import Counter

from celeriac import (
    Fatal, HttpError, InvalidInput, Retry, config_get, http_get, kv, log, progress, should_stop,
    task, task_info,
)

import cpu
from words import words as _words


@task
def sha256(text: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@task
def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return _words(text)


@task
def upper(text: str) -> str:
    """Upper-cased text (Unicode-aware: 'straße' -> 'STRASSE')."""
    return text.upper()


@task
def reverse(text: str) -> str:
    """Text with its code points in reverse order."""
    return text[::-1]


@task
def stats(text: str) -> dict:
    """Byte, character, word and line counts (lines as Rust's str::lines())."""
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return {
        "bytes": len(text.encode("utf-8")),
        "chars": len(text),
        "words": _words(text),
        "lines": lines,
    }


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


@task
def extract_emails(text: str, unique: bool = True) -> list:
    """E-mail addresses in order of appearance (deduplicated, case-insensitively, by default)."""
    found = _EMAIL.findall(text)
    if not unique:
        return found
    seen, out = set(), []
    for e in found:
        if e.lower() not in seen:
            seen.add(e.lower())
            out.append(e)
    log.debug("found %d addresses (%d unique)", len(found), len(out))
    return out


@task(name="top_words")
def most_common_words(text: str, n: int = 10, min_length: int = 1) -> list:
    """The `n` most frequent words (case-folded), as [[word, count], ...]."""
    if n < 1:
        raise InvalidInput(f"n must be at least 1, got {n}")
    counts = Counter()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if i % 10_000 == 0:
            progress(i, len(lines))
            if should_stop():
                log.warn("soft limit reached at line %d of %d", i, len(lines))
                break
        counts.update(w for w in _WORD.findall(line.casefold()) if len(w) >= min_length)
    return [[w, c] for w, c in counts.most_common(n)]


@task
def eventually(text: str, after: int) -> str:
    """The text back, once retried `after` times: a transient failure until then."""
    retries = task_info().retries
    if retries < after:
        raise Retry(f"not yet: attempt {retries + 1} of {after + 1}")
    return text


@task
def ascii(text: str) -> str:
    """The text back if it is ASCII; a permanent failure naming the first other character."""
    for i, ch in enumerate(text):
        if ord(ch) >= 0x80:
            raise Fatal(f"not ASCII: `{ch}` at character {i}")
    return text


@task
def fib(n: int) -> int:
    """The n-th Fibonacci number, naively (the same-code benchmark; see cpu.py)."""
    if not 0 <= n <= 35:
        raise InvalidInput(f"n must be between 0 and 35, got {n}")
    return cpu.fib(n)


_calls = 0


@task
def calls() -> int:
    """How many times this task ran in this interpreter: 1 in a fresh instance,
    n for the n-th task of one reused (`sign --reuse`, `worker --reuse`)."""
    global _calls
    _calls += 1
    return _calls


# --- capabilities (granted in the signed manifest) -------------------------

@task
def get(url: str) -> dict:
    """GET `url` through the host (wasi:http): status and the body's head."""
    try:
        r = http_get(url)
    except HttpError as e:
        raise Retry(f"GET {url}: {e}")
    return {"status": r.status, "body": r.text()[:1024]}


@task
def config_has(key: str) -> bool:
    """Whether the worker has a configuration value for `key`."""
    return config_get(key) is not None


@task
def counter(key: str) -> int:
    """Add one to the module's counter `key`."""
    return kv.increment(key)
