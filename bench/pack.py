"""Tokenize + pack throughput on one core, and packing efficiency at 2048, on a synthetic stage-2 mix.

    python bench/pack.py [--samples 20000] [--group 3000] [--seq-len 2048] [--seed 0] [--dialect qwen2-vl]

The mix follows Qwen-VL's stage-2 shares (captioning 25%, VQA 5%, grounding 4%, referring 11%, grounded
captioning 11%, OCR 32%, pure text 10% of samples), each sample in a Qwen-VL-like template: an image
(258 tokens) and a prompt, then the supervised answer with <|endoftext|>; boxes `(x1,y1),(x2,y2)` on the
0-999 grid, OCR lines with quads, pure-text documents of lognormal length (a tenth longer than 2048).
Text is random words (English, some Chinese), so the token counts, not the words, are realistic.

--dialect qwen2-vl writes the same samples in Qwen2-VL's tags, each image at its own resolution
(formats/dynamic_resolution.py): sizes drawn like web photos (the longer side lognormal around 600 px,
aspect 1:2 to 2:1), so an image takes tens to a few thousand pads instead of Qwen-VL's fixed 256, and
samples whose image alone passes --seq-len are rejected as too long (counted).

Each task is packed on its own in groups of `--group` samples, as the pipeline does. Baselines in the
same run: tiktoken's encode_ordinary alone on the same strings (time ratio), and naive sequential
greedy packing (next fit, input order) and best-fit decreasing (efficiency). The efficiency of the
whole mix packed together is printed too: one task's samples of near-constant length have a ceiling
(7 referring samples of ~285 tokens fill 97% of 2048, and an 8th never fits), a mix does not.
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from formats.dialects import QWEN2_VL, get_dialect, translate_grounding  # noqa: E402
from formats.dynamic_resolution import image_grid, image_tokens, smart_resize  # noqa: E402
from formats.packing import Sample, best_fit_decreasing, fill_bins, next_fit, pack  # noqa: E402
from formats.tokenizer import QwenTokenizer  # noqa: E402

WORDS = (
    "a the man woman dog cat red blue green small large old young standing sitting holding walking next to on in "
    "front of behind near with and white black brown wooden table chair street car bus tree building window sky "
    "people group two three child boy girl playing ball field grass water river boat bridge road sign shirt hat "
    "looking at camera smiling picture photo of view city night light sunset beach mountain snow kitchen plate food "
    "pizza sandwich bowl cup phone computer book bed room wall door floor grey yellow orange purple pink large "
    "several many some very background foreground left right top bottom middle corner"
).split()
HAN = "一个男人女人小狗猫红色蓝色绿色站在坐着拿着走路旁边上面里面前面后面白色黑色木头桌子椅子街道汽车公交树建筑窗户天空人们孩子草地河流桥路标"
SHARES = {"caption": 25, "vqa": 5, "grounding": 4, "referring": 11, "grounded_caption": 11, "ocr": 32, "text": 10}


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def han(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(HAN) for _ in range(n)) + "。"


def box(rng: random.Random) -> str:
    x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
    return f"<box>({x1},{y1}),({rng.randint(x1 + 1, 999)},{rng.randint(y1 + 1, 999)})</box>"


def quad(rng: random.Random) -> str:
    return "<quad>" + ",".join(f"({rng.randint(0, 999)},{rng.randint(0, 999)})" for _ in range(4)) + "</quad>"


def image(rng: random.Random, k: int) -> str:
    return f"Picture 1: <img>coco/train2017/{k:012d}.jpg</img>\n"


def make_sample(task: str, rng: random.Random, k: int) -> list[tuple[str, bool]]:
    """(text, supervised) segments of one synthetic sample."""
    zh = rng.random() < 0.2
    if task == "caption":
        prompt = "Generate the caption in Chinese:" if zh else "Generate the caption in English:"
        answer = han(rng, rng.randint(15, 45)) if zh else words(rng, rng.randint(12, 45)) + "."
        return [(image(rng, k) + prompt, False), (" " + answer + "<|endoftext|>", True)]
    if task == "vqa":
        return [(image(rng, k) + words(rng, rng.randint(5, 16)) + "? Answer:", False), (" " + words(rng, rng.randint(1, 8)) + "<|endoftext|>", True)]
    if task == "grounding":
        parts = [f"{words(rng, rng.randint(2, 8))} <ref>{words(rng, rng.randint(1, 4))}</ref>{box(rng)}" for _ in range(rng.randint(1, 6))]
        return [(image(rng, k) + "Generate the caption with grounding:", False), (" " + " ".join(parts) + ".<|endoftext|>", True)]
    if task == "referring":
        return [(image(rng, k) + f"<ref>{words(rng, rng.randint(2, 12))}</ref>", False), ("".join(box(rng) for _ in range(rng.choice([1, 1, 1, 2]))) + "<|endoftext|>", True)]
    if task == "grounded_caption":
        return [(image(rng, k) + f"<ref>{box(rng)}</ref>", False), (words(rng, rng.randint(4, 20)) + "<|endoftext|>", True)]
    if task == "ocr":
        n = min(int(rng.lognormvariate(2.3, 0.9)) + 1, 60)
        lines = [f"<ref>{words(rng, rng.randint(1, 6))}</ref>{quad(rng)}" for _ in range(n)]
        return [(image(rng, k) + "OCR with grounding:", False), ("".join(lines) + "<|endoftext|>", True)]
    n = max(8, min(int(rng.lognormvariate(6.6, 1.0)), 12_000))  # words; ~1.1 tokens each
    paragraphs = [han(rng, 60) if zh and rng.random() < 0.5 else words(rng, 80) + "." for _ in range(n // 80 + 1)]
    return [("\n\n".join(paragraphs) + "<|endoftext|>", True)]


def image_pads(rng: random.Random) -> int:
    """The pads of a web-photo-sized image in Qwen2-VL: the longer side lognormal around 600 px."""
    longer = max(56, int(rng.lognormvariate(6.4, 0.45)))
    shorter = max(28, int(longer / rng.uniform(1.0, 2.0)))
    height, width = (longer, shorter) if rng.random() < 0.3 else (shorter, longer)
    return image_tokens(image_grid(*smart_resize(height, width)))


def in_qwen2_vl(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """A sample's segments in Qwen2-VL's tags: the image inline without its picture number."""
    out = []
    for text, supervised in segments:
        text = text.replace("Picture 1: <img>", QWEN2_VL.image).replace("</img>\n", QWEN2_VL.image_end)
        out.append((translate_grounding(text, QWEN2_VL), supervised))
    return out


def piece_lengths(n: int, has_images: bool, seq_len: int) -> list[int]:
    """The lengths pack() bins for a sample of n tokens: pure text cut every seq_len, too long dropped."""
    if has_images:
        return [n] if n <= seq_len else []
    return [seq_len] * (n // seq_len) + ([n % seq_len] if n % seq_len else [])


def mix(n: int, seed: int) -> dict[str, list[list[tuple[str, bool]]]]:
    rng = random.Random(seed)
    total = sum(SHARES.values())
    return {task: [make_sample(task, rng, k) for k in range(round(n * share / total))] for task, share in SHARES.items()}


def fewest_bins(lengths: list[int], capacity: int) -> int:
    """A lower bound on the bins of any packing that splits nothing: ceil(total / capacity), and a
    cardinality bound. No bin holds more than k = capacity // shortest items; a bin of k holds k items
    within capacity, so the bins of k hold at most the m shortest items whose total fits m / k bins;
    the rest need bins of at most k - 1."""
    x = sorted(lengths)
    bound = -(-sum(x) // capacity)
    k = capacity // x[0]
    if k == 1:
        return max(bound, len(x))
    prefix = most = 0
    for i, n in enumerate(x, 1):
        prefix += n
        if prefix * k > capacity * i:
            break  # the average of the shortest i only grows with i
        if i % k == 0:
            most = i
    return max(bound, most // k + -(-(len(x) - most) // (k - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=3000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dialect", default="qwen-vl", choices=["qwen-vl", "qwen2-vl"])
    args = parser.parse_args()
    seq_len = args.seq_len

    started = time.perf_counter()
    dialect = get_dialect(args.dialect)
    tok = QwenTokenizer(dialect=dialect)
    image_id = dialect.special_ids()[dialect.image]
    print(f"{dialect.name} tokenizer loaded in {time.perf_counter() - started:.2f} s (once per worker)")
    data = mix(args.samples, args.seed)
    vision = {}  # Qwen2-VL: each sample's image spans, (pads, video)
    if dialect is QWEN2_VL:
        sizes = random.Random(args.seed + 1)
        data = {task: [in_qwen2_vl(segments) for segments in samples] for task, samples in data.items()}
        vision = {(task, k): [(image_pads(sizes), False)] * sum(t.count(QWEN2_VL.image) for t, _ in segments)
                  for task, samples in data.items() for k, segments in enumerate(samples)}

    # the baseline: tiktoken alone on the same strings, tags and image references as plain text
    strings = [text for samples in data.values() for segments in samples for text, _ in segments]
    started = time.perf_counter()
    plain_tokens = sum(len(ids) for ids in tok.encoding.encode_ordinary_batch(strings, num_threads=1))
    plain_s = time.perf_counter() - started

    tokenize_s = pack_s = 0.0
    tokens = text_tokens = 0
    groups = {}  # task: per group, the lengths of the pieces pack() bins and the sequences it made
    too_long: dict[str, int] = {}  # task: samples rejected as longer than seq_len (images: never cut)
    for task, samples in data.items():
        started = time.perf_counter()
        encoded = [tok.encode_segments(segments, vision.get((task, k))) for k, segments in enumerate(samples)]
        tokenize_s += time.perf_counter() - started
        items = [Sample(f"{task}-{k}", e.ids, e.mask, e.images) for k, e in enumerate(encoded)]
        tokens += sum(len(e.ids) for e in encoded)
        text_tokens += sum(len(e.ids) - sum(n + 2 for n, _ in vision.get((task, k), [(256, False)] * len(e.images))) for k, e in enumerate(encoded))
        groups[task] = []
        for g in range(0, len(items), args.group):
            started = time.perf_counter()
            sequences, rejects = pack(items[g : g + args.group], seq_len, image_id=image_id)
            pack_s += time.perf_counter() - started
            too_long[task] = too_long.get(task, 0) + len(rejects)
            lengths = [n for s in items[g : g + args.group] for n in piece_lengths(len(s.ids), bool(s.images), seq_len)]
            assert sum(lengths) == sum(int((s.doc >= 0).sum()) for s in sequences)
            groups[task].append((lengths, len(sequences)))

    print(f"\n{args.samples:,} samples ({tokens:,} tokens: {text_tokens:,} text, {tokens - text_tokens:,} image slots), one core")
    print(f"  tiktoken encode_ordinary alone, same strings (baseline): {plain_s:.2f} s, {plain_tokens / plain_s:,.0f} tokens/s")
    print(f"  tokenize (encode_segments):                            {tokenize_s:.2f} s, {tokens / tokenize_s:,.0f} tokens/s ({text_tokens / tokenize_s:,.0f} text tokens/s)")
    print(f"  pack (groups of {args.group:,}, seq_len {seq_len}):                   {pack_s:.2f} s, {tokens / pack_s:,.0f} tokens/s")
    both = tokenize_s + pack_s
    print(f"  tokenize + pack:                                       {both:.2f} s, {tokens / both:,.0f} tokens/s per core; {both / plain_s:.2f}x the time of tiktoken alone")

    columns = {"next fit": lambda x, n: len(next_fit(x, seq_len)), "BFD": lambda x, n: len(best_fit_decreasing(x, seq_len)), "ours": lambda x, n: n, "ceiling": lambda x, n: fewest_bins(x, seq_len)}
    print(f"\npacking efficiency at {seq_len} (share of non-pad tokens), each task packed on its own in groups of {args.group:,};")
    print("ceiling: the most any packing that splits no sample can reach (a bound on the fewest sequences)")
    print(f"  {'task':<17}{'samples':>8}{'too long':>9}{'mean len':>9}{'seqs':>7}" + "".join(f"{c:>9}" for c in columns) + f"{'ours/next fit':>15}")
    total_used, total_bins = 0, dict.fromkeys(columns, 0)
    for task, task_groups in groups.items():
        used = sum(sum(x) for x, _ in task_groups)
        bins = {c: sum(f(x, n) for x, n in task_groups) for c, f in columns.items()}
        total_used += used
        total_bins = {c: total_bins[c] + bins[c] for c in columns}
        n_pieces = sum(len(x) for x, _ in task_groups)
        print(f"  {task:<17}{len(data[task]):>8,}{too_long.get(task, 0):>9,}{used / n_pieces:>9.0f}{bins['ours']:>7,}" + "".join(f"{used / (b * seq_len):>9.2%}" for b in bins.values()) + f"{bins['next fit'] / bins['ours']:>15.3f}")
    print(f"  {'all tasks':<17}{args.samples:>8,}{sum(too_long.values()):>9,}{'':>9}{total_bins['ours']:>7,}" + "".join(f"{total_used / (b * seq_len):>9.2%}" for b in total_bins.values()) + f"{total_bins['next fit'] / total_bins['ours']:>15.3f}")

    everything = [n for task_groups in groups.values() for x, _ in task_groups for n in x]
    random.Random(args.seed).shuffle(everything)
    mixed = {name: 0 for name in ("next fit", "BFD", "ours", "ceiling")}
    for g in range(0, len(everything), args.group):
        x = everything[g : g + args.group]
        for name, count in (("next fit", next_fit), ("BFD", best_fit_decreasing), ("ours", fill_bins)):
            mixed[name] += len(count(x, seq_len))
        mixed["ceiling"] += fewest_bins(x, seq_len)
    print(f"  the mix shuffled and packed together, {args.group:,} pieces a group (not what the pipeline does): " + ", ".join(f"{name} {total_used / (b * seq_len):.2%}" for name, b in mixed.items()))


if __name__ == "__main__":
    main()
