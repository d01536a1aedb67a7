// Plain JavaScript with no Celeriac import: the word count `app.js` exposes
// as the `word_count` task (and `stats`); bench/bullmq imports this very
// file into a BullMQ worker, so both systems run the same source
// (bench/compare's js-short).

// A plain charCodeAt loop: StarlingMonkey interprets JS (no JIT in wasm)
// and its regexes are slow, so this is the fastest shape measured on 1 MB.

// Words as Rust's split_whitespace: runs of non-White_Space. JS's \s is
// not the same set (it has U+FEFF, lacks U+0085).
export function words(s) {
  let n = 0, inWord = false;
  const len = s.length;
  for (let i = 0; i < len; i++) {
    const c = s.charCodeAt(i);
    const ws = c === 32 || (c >= 9 && c <= 13) || (c >= 0x85 && (c === 0x85 || c === 0xa0 || c === 0x1680 ||
      (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000));
    if (!ws && !inWord) n++;
    inWord = !ws;
  }
  return n;
}
