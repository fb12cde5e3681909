#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes examples/minilm/unicode_tables.hpp: the character tables of BERT's text pipeline.

The tables are read off HuggingFace tokenizers itself rather than Python's unicodedata, because
the Rust crates behind tokenizers carry their own Unicode version; asking the library character
by character gives exactly the sets it uses. Every code point (surrogates excepted) goes through
  - BertNormalizer(clean_text only): removed (controls, format, unassigned...) or turned into ' ';
  - BertNormalizer(handle_chinese_chars only): padded with spaces (CJK ideographs);
  - BertNormalizer(strip_accents + lowercase only): NFD, nonspacing marks dropped, lowercased;
  - BertPreTokenizer: split off as whitespace or isolated as punctuation.
Hangul syllables decompose algorithmically (the C++ side computes them; this script checks that
the formula agrees). NFD's canonical reordering of combining marks is not in the tables: nearly
every mark it reorders is a nonspacing one, which stripping drops anyway; the exceptions are 25
spacing marks with a nonzero combining class (some viramas, the Hangul tone marks U+302E/F,
musical symbols U+1D165-U+1D172), whose relative order examples/minilm keeps as written.

Run with the peer venv (scripts/make-peer-venv.sh):
  ../peer-venv/bin/python tools/make_minilm_unicode.py
"""
import importlib.metadata as md
import pathlib

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "minilm" / "unicode_tables.hpp"
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
REMOVED_DOC = "Dropped by clean_text (controls but tab/LF/CR, format, private use, U+FFFD)"
PUNCTUATION_DOC = "Isolated by the pre-tokenizer (Unicode P*, ASCII symbols)"


def code_points():
    return (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def ranges(points):
    out = []
    for c in points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def hangul_nfd(c):
    s = c - HANGUL_FIRST
    jamo = [0x1100 + s // 588, 0x1161 + (s % 588) // 28]
    if s % 28:
        jamo.append(0x11A7 + s % 28)
    return jamo


def probe():
    clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                           lowercase=False)
    chinese = BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False,
                             lowercase=False)
    fold = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                          lowercase=True)
    split = BertPreTokenizer()
    removed, spaces, padded, whitespace, punctuation = [], [], [], [], []
    folded = {}
    for c in code_points():
        s = chr(c)
        cleaned = clean.normalize_str(s)
        if cleaned == "":
            removed.append(c)
        elif cleaned == " " and s != " ":
            spaces.append(c)
        else:
            assert cleaned == s, hex(c)
        if chinese.normalize_str(s) != s:
            assert chinese.normalize_str(s) == f" {s} ", hex(c)
            padded.append(c)
        out = [ord(x) for x in fold.normalize_str(s)]
        if HANGUL_FIRST <= c <= HANGUL_LAST:
            assert out == hangul_nfd(c), hex(c)
        elif out != [c]:
            folded[c] = out
        pieces = [p for p, _ in split.pre_tokenize_str(f"a{s}a")]
        if pieces == ["a", "a"]:
            whitespace.append(c)
        elif pieces == ["a", s, "a"]:
            punctuation.append(c)
        else:
            assert pieces == [f"a{s}a"], hex(c)
    return removed, spaces, padded, folded, whitespace, punctuation


def single_runs(folded):
    """Code points mapped to one code point, as (first, last, step, delta) runs: every
    first + k * step up to last maps to itself + delta (case pairs alternate, hence step 2)."""
    runs = []
    for c in sorted(c for c, out in folded.items() if len(out) == 1):
        delta = folded[c][0] - c
        if runs:
            first, last, step, d = runs[-1]
            gap = c - last
            if d == delta and ((step == 0 and gap in (1, 2)) or gap == step):
                runs[-1] = [first, c, gap, d]
                continue
        runs.append([c, c, 0, delta])
    return [[a, b, s or 1, d] for a, b, s, d in runs]


def hex_rows(items, width=100):
    """items joined by spaces, four-space indented, in lines of at most `width` columns."""
    lines = []
    for item in items:
        if lines and len(lines[-1]) + 1 + len(item) <= width:
            lines[-1] += " " + item
        else:
            lines.append("    " + item)
    return "\n".join(lines)


def range_array(name, rs, what):
    items = [f"{{0x{a:X}, 0x{b:X}}}," for a, b in rs]
    return (f"/// {what} ({len(rs)} ranges, sorted).\n"
            f"inline constexpr code_range {name}[] = {{\n{hex_rows(items)}\n}};\n")


def main():
    removed, spaces, padded, folded, whitespace, punctuation = probe()
    nonspacing = [c for c, out in folded.items() if not out]
    runs = [r for r in single_runs(folded) if r[0] != r[1]]
    in_runs = {c for a, b, s, _ in runs for c in range(a, b + 1, s)}
    pairs = sorted(c for c, out in folded.items() if len(out) == 1 and c not in in_runs)
    multi = sorted(c for c, out in folded.items() if len(out) > 1)
    run_items = [f"{{0x{a:X}, 0x{b:X}, {s}, {d}}}," for a, b, s, d in runs]
    pair_items = [f"0x{c:X}, 0x{folded[c][0]:X}," for c in pairs]
    # Flat list: code point, count, then the count code points it folds to (count may be 0).
    multi_items = []
    for c in multi:
        out = folded[c]
        multi_items.append(", ".join([f"0x{c:X}", str(len(out))] + [f"0x{x:X}" for x in out]) + ",")
    version = md.version("tokenizers")
    text = f"""// SPDX-License-Identifier: Apache-2.0
// Character tables of BERT's normalizer and pre-tokenizer, read off HuggingFace tokenizers.
// Generated by tools/make_minilm_unicode.py from tokenizers {version}; do not edit by hand.
#pragma once

#include <cstdint>

namespace minilm::unicode_tables {{

/// \\brief Inclusive range of code points.
struct code_range {{
  std::uint32_t first;
  std::uint32_t last;
}};

/// \\brief first, first + step, ... up to last each fold to themselves + delta.
struct fold_run {{
  std::uint32_t first;
  std::uint32_t last;
  std::uint32_t step;
  std::int32_t delta;
}};

{range_array("removed", ranges(removed), REMOVED_DOC)}
{range_array("to_space", ranges(spaces), "Turned into ' ' by clean_text")}
{range_array("chinese", ranges(padded), "Padded with a space on each side by handle_chinese_chars")}
{range_array("whitespace", ranges(whitespace), "Split points the pre-tokenizer drops")}
{range_array("punctuation", ranges(punctuation), PUNCTUATION_DOC)}
{range_array("nonspacing", ranges(nonspacing), "Nonspacing marks, which strip_accents drops")}
/// Runs of code points that strip_accents + lowercase map to one other code point each
/// ({len(runs)} runs, sorted by first). Hangul syllables are decomposed arithmetically instead.
inline constexpr fold_run fold_runs[] = {{
{hex_rows(run_items)}
}};

/// The other one-to-one folds ({len(pairs)}, sorted): code point, then what it folds to.
inline constexpr std::uint32_t fold_pairs[] = {{
{hex_rows(pair_items)}
}};

/// Folds to several code points ({len(multi)}, sorted): code point, count, then the count code
/// points.
inline constexpr std::uint32_t fold_multi[] = {{
{hex_rows(multi_items)}
}};

}}  // namespace minilm::unicode_tables
"""
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text)} bytes): {len(runs)} runs, "
          f"{len(pairs)} pairs, {len(multi)} multi folds")


if __name__ == "__main__":
    main()
