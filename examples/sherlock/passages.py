"""Split the Sherlock Holmes canon into passages of roughly 60-200 words (standard library only).

    python3 examples/sherlock/passages.py --out passages.jsonl
    python3 examples/sherlock/passages.py --out slice.jsonl --only "study-in-scarlet/1,speckled-band"

Each output line is a JSON object:

    {"id": "study-in-scarlet/1/003", "story": "A Study in Scarlet", "part": 1, "chapter": 1,
     "chapter_title": "Mr. Sherlock Holmes", "passage": 3, "text": "..."}

- `id` is `<story slug>/<chapter>/<passage>`, or `<story slug>/<passage>` for a story without
  chapters (`red-headed-league/007`). Passages are numbered from 0 within their chapter.
- `chapter` counts through the whole book, so in the two books that restart their chapter
  numbers in Part II (A Study in Scarlet, The Valley of Fear) Part II's Chapter I is chapter 8;
  `part` says which part (null outside those two books). `chapter` and `chapter_title` are null
  for stories without chapters; `chapter_title` is null when a chapter has none.
- A passage never crosses a story or chapter boundary. Paragraphs (blank-line separated) are
  merged until a passage reaches MIN_WORDS; paragraphs longer than MAX_WORDS are split between
  sentences; a short last passage of a chapter joins the one before it (up to 250 words, so a
  few passages run past 200). Whitespace is collapsed and the file's mojibake (UTF-8 read as
  cp1252: 'Â£' for '£') is repaired.
- Collection titles, prefaces, tables of contents and part title pages are skipped.

The input (default ../shared/data/sherlock-holmes-canon.txt from the repository root) has this
layout: body text indented 5 spaces; story and collection titles centred in capitals after 5+
blank lines; "PART I" centred; "CHAPTER IV" indented 10 spaces, its title on the next line. It
begins at A Study in Scarlet's "PART I", without the book's title.
"""
import argparse
import json
import math
import os
import re
import sys

MIN_WORDS = 60
MAX_WORDS = 200
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INPUT = os.path.join(HERE, "..", "..", "..", "shared", "data", "sherlock-holmes-canon.txt")
FIRST_STORY = "A Study in Scarlet"  # the file starts at its "PART I", without a title line

CHAPTER_RE = re.compile(r"^CHAPTER ([IVXLC]+)$")
PART_RE = re.compile(r"^PART ([IVX]+)$")
SMALL_WORDS = {"a", "an", "and", "the", "of", "in", "on", "upon", "at", "to", "for", "by", "with"}
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Messrs.", "Col.", "Capt.", "Rev.", "Prof.", "No.", "Mme.")


def roman(numeral):
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
    total = 0
    for ch, nxt in zip(numeral, numeral[1:] + " "):
        v = values[ch]
        total += -v if nxt != " " and values[nxt] > v else v
    return total


def fix_mojibake(text):
    """'daÃŸ' -> 'daß', 'Â£4' -> '£4': UTF-8 bytes that were decoded as cp1252."""
    def repair(m):
        try:
            return m.group(0).encode("cp1252").decode("utf-8")
        except UnicodeError:
            return m.group(0)
    text = text.replace("\u00c3 ", "\u00e0")  # 'à' is C3 A0; the A0 (no-break space) became a space
    return re.sub(r"[^\x00-\x7f]+", repair, text)


def title_case(caps):
    """'THE ADVENTURE OF THE SPECKLED BAND' -> 'The Adventure of the Speckled Band'."""
    words = []
    for i, word in enumerate(caps.lower().split()):
        if i > 0 and word in SMALL_WORDS:
            words.append(word)
        else:  # capitalise each hyphen-separated part at its first letter: '"gloria', 'red-headed'
            words.append("-".join(re.sub(r"[a-z]", lambda m: m.group(0).upper(), p, count=1) for p in word.split("-")))
    return " ".join(words)


def slug(title):
    """'The Adventure of the Speckled Band' -> 'speckled-band', 'A Study in Scarlet' -> 'study-in-scarlet'."""
    s = re.sub(r"[^a-z0-9]+", "-", title.lower().replace("'", "")).strip("-")
    s = re.sub(r"^(the-)?adventure-of-(the-)?", "", s)
    return re.sub(r"^(a|an|the)-", "", s)


def blocks(lines):
    """Runs of non-blank lines: (blank lines before, indent of first line, stripped lines)."""
    out, current, blanks = [], [], 99  # the start of the file counts as a major break
    for line in lines + [""]:
        if line.strip():
            if not current:
                indent = len(line) - len(line.lstrip(" "))
            current.append(line.strip())
        elif current:
            out.append((blanks, indent, current))
            current, blanks = [], 1
        else:
            blanks += 1
    return out


def sentences(paragraph):
    parts = re.split(r"(?:(?<=[.!?])|(?<=[.!?]['\"]))\s+(?=['\"(]*[A-Z])", paragraph)
    out = []
    for p in parts:
        if out and out[-1].endswith(ABBREVIATIONS):
            out[-1] += " " + p
        else:
            out.append(p)
    return out


def split_long(paragraph):
    """A paragraph over MAX_WORDS -> near-equal pieces cut between sentences."""
    n = len(paragraph.split())
    if n <= MAX_WORDS:
        return [paragraph]
    target = n / math.ceil(n / MAX_WORDS)
    pieces, current, words = [], [], 0
    for s in sentences(paragraph):
        w = len(s.split())
        if current and (words + w > MAX_WORDS or words >= target):
            pieces.append(" ".join(current))
            current, words = [], 0
        current.append(s)
        words += w
    pieces.append(" ".join(current))
    return pieces


def pack(paragraphs):
    """Merge paragraphs into passages of MIN_WORDS..MAX_WORDS where the text allows."""
    units = [piece for p in paragraphs for piece in split_long(p)]
    passages, current, words = [], [], 0
    while units:
        u = units.pop(0)
        w = len(u.split())
        if current and words + w > MAX_WORDS:
            if words < MIN_WORDS:
                # Too short to stand alone, too long with all of u: top it up with u's first sentences.
                head, tail = [], sentences(u)
                while tail and words < MIN_WORDS and words + len(tail[0].split()) <= MAX_WORDS:
                    words += len(tail[0].split())
                    head.append(tail.pop(0))
                if head:
                    current.append(" ".join(head))
                    if tail:
                        units.insert(0, " ".join(tail))
                    continue
            passages.append(current)
            current, words = [], 0
        current.append(u)
        words += w
    if current:
        # A short tail joins the passage before it when the two still fit.
        if passages and words < MIN_WORDS and words + sum(len(u.split()) for u in passages[-1]) <= MAX_WORDS * 1.25:
            passages[-1].extend(current)
        else:
            passages.append(current)
    return [" ".join(p) for p in passages]


def parse(text):
    """Yield (story, part, chapter, chapter_title, paragraphs) for every chapter (or chapterless story)."""
    lines = fix_mojibake(text.replace("\r", "")).split("\n")
    story, part, chapter, chapter_title = FIRST_STORY, None, None, None
    skipping = False  # inside a table of contents, preface or part title page
    paragraphs = []

    def flush():
        if paragraphs:
            yield story, part, chapter, chapter_title, list(paragraphs)
            paragraphs.clear()

    for blanks, indent, block in blocks(lines):
        first = block[0]
        if CHAPTER_RE.match(first) and indent >= 10:
            yield from flush()
            chapter = (chapter or 0) + 1
            chapter_title = " ".join(block[1:]) or None
            skipping = False
        elif PART_RE.match(first) and indent >= 15:
            yield from flush()
            part = roman(PART_RE.match(first).group(1))
            skipping = True  # the part's subtitle, up to its first chapter
        elif first in ("Table of contents", "PREFACE") and indent >= 15:
            yield from flush()
            skipping = True
        elif blanks >= 5 and indent >= 15 and first.upper() == first and re.search("[A-Z]", first):
            # A story title (or a collection title: it has no text of its own, so yields nothing).
            yield from flush()
            story, part, chapter, chapter_title = title_case(first), None, None, None
            skipping = False  # block[1:] is a subtitle ("An Epilogue of Sherlock Holmes"): dropped
        elif not skipping:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(block)).strip())
    yield from flush()


def passages(text):
    """The canon's passages as dicts, in reading order."""
    out = []
    for story, part, chapter, chapter_title, paragraphs in parse(text):
        prefix = slug(story) + ("" if chapter is None else f"/{chapter}")
        for i, body in enumerate(pack(paragraphs)):
            out.append({
                "id": f"{prefix}/{i:03d}",
                "story": story,
                "part": part,
                "chapter": chapter,
                "chapter_title": chapter_title,
                "passage": i,
                "text": body,
            })
    return out


def select(rows, only=None, stories=None):
    """Keep the first `stories` stories and/or the stories or chapters named in `only`
    (comma-separated; each a title or slug, optionally "/<chapter>": "study-in-scarlet/1")."""
    if only:
        wanted = []
        for item in only.split(","):
            name, _, ch = item.strip().partition("/")
            wanted.append(slug(name) + (f"/{int(ch)}" if ch else "") + "/")
        rows = [r for r in rows if any(r["id"].startswith(w) for w in wanted)]
        missing = [w for w in wanted if not any(r["id"].startswith(w) for r in rows)]
        if missing:
            sys.exit(f"--only: nothing matches {', '.join(w.rstrip('/') for w in missing)}")
    if stories is not None:
        keep = list(dict.fromkeys(r["story"] for r in rows))[:stories]
        rows = [r for r in rows if r["story"] in keep]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=DEFAULT_INPUT, help="the canon as plain text")
    ap.add_argument("--out", required=True, help="JSON-lines file to write ('-' for stdout)")
    ap.add_argument("--stories", type=int, help="only the first N stories")
    ap.add_argument("--only", help='stories or chapters, comma-separated: "speckled-band,A Study in Scarlet/1"')
    args = ap.parse_args()

    with open(args.input, encoding="utf-8") as f:
        rows = select(passages(f.read()), args.only, args.stories)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    for r in rows:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
    if out is not sys.stdout:
        out.close()
    words = [len(r["text"].split()) for r in rows]
    print(
        f"{len({r['story'] for r in rows})} stories, "
        f"{len({(r['story'], r['chapter']) for r in rows})} chapters (a story without chapters counts as one), "
        f"{len(rows)} passages, words per passage min/median/max "
        f"{min(words)}/{sorted(words)[len(words) // 2]}/{max(words)}",
        file=sys.stderr if out is sys.stdout else sys.stdout,
    )


if __name__ == "__main__":
    main()
