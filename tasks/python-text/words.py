"""Plain Python with no Celeriac import: the word count behind `app.py`'s
`word_count` (and `stats`). bench/celery imports this very file into a
Celery task, so both systems run the same source (bench/compare's
python-short).
"""

import re

# Rust's split_whitespace() uses Unicode White_Space; Python's str.split()
# also splits on U+001C..U+001F, which Rust keeps inside words.
_PY_ONLY_SPACE = re.compile("[\x1c-\x1f]")


def words(text: str) -> int:
    """Number of whitespace-separated words, as Rust's split_whitespace()."""
    if _PY_ONLY_SPACE.search(text):
        text = _PY_ONLY_SPACE.sub("_", text)
    return len(text.split())
