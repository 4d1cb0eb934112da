"""Reference values from the released Qwen2-VL code: transformers 4.57.6 (`Qwen2VLImageProcessor`,
`Qwen2VLVideoProcessor`, `smart_resize`, `Qwen2VLModel.get_rope_index`, `Qwen2VLForConditionalGeneration`,
`Qwen2Tokenizer`) and qwen-vl-utils 0.0.14 (`smart_nframes`, `fetch_video`), installed
into .reference (`make test` does it: `pip install --target .reference --no-deps ...`).

They run in a child process: transformers 4.57.6 needs huggingface-hub < 1.0, while the venv's is 2.x
and open_clip imports it into the test process first. The child puts .reference first on sys.path;
.reference holds no numpy or torch (installed with --no-deps), so the venv's are the ones used.

`reference(name, cases)` runs `name` (one of the functions below) on the JSON-able `cases`; large arrays
go both ways through .npy / .safetensors files whose paths the cases name.
"""

import json
import subprocess
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / ".reference"


def reference(name: str, cases: list) -> list:
    """The reference's answers for `cases`, computed in a child process."""
    if not (REFERENCE / "transformers").is_dir():
        raise RuntimeError(f"{REFERENCE} has no transformers: run `make test` (or its .reference step) first")
    done = subprocess.run(
        [sys.executable, __file__], input=json.dumps({"name": name, "cases": cases}), capture_output=True, text=True, timeout=300
    )
    if done.returncode:
        raise RuntimeError(f"reference {name} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def resize(cases):
    """[height, width, min_pixels, max_pixels] -> [smart_resize's (h, w), image_grid_thw of a preprocess
    call on a zero image of that size], or the ValueError's message."""
    import numpy as np
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    out = []
    for height, width, min_pixels, max_pixels in cases:
        try:
            size = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
        except ValueError as e:
            out.append(str(e))
            continue
        processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
        image = np.zeros((height, width, 3), dtype=np.uint8)
        grid = processor(images=[image], input_data_format="channels_last", return_tensors="np")["image_grid_thw"]
        out.append([list(size), grid[0].tolist()])
    return out


def rope(cases):
    """{"ids": [...], "images": [[t, h, w], ...], "videos": [...]} -> the 3 x len(ids) position ids of
    get_rope_index on a tiny Qwen2VLModel built on CPU."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLModel

    config = Qwen2VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "vocab_size": 151936, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "spatial_merge_size": 2},
    )
    model = Qwen2VLModel(config)
    out = []
    for case in cases:
        grids = {k: torch.tensor(case[k]) if case[k] else None for k in ("images", "videos")}
        ids, _ = model.get_rope_index(torch.tensor([case["ids"]]), image_grid_thw=grids["images"], video_grid_thw=grids["videos"])
        out.append(ids[:, 0].tolist())
    return out


def nframes(cases):
    """[total_frames, video_fps] -> smart_nframes with the default 2 fps, or the ValueError's message."""
    from qwen_vl_utils.vision_process import smart_nframes

    out = []
    for total, fps in cases:
        try:
            out.append(smart_nframes({}, total_frames=total, video_fps=fps))
        except ValueError as e:
            out.append(str(e))
    return out


def tokenize(cases):
    """[text, ...] -> the ids transformers' Qwen2Tokenizer (the released BPE and pre-tokenizer, in Python)
    gives each text, its vocab.json and merges.txt made from the same qwen.tiktoken and its special tokens
    Qwen2-VL's, in their released order after <|endoftext|>."""
    import tempfile

    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from formats.dialects import QWEN2_VL
    from formats.tokenizer import default_vocabulary

    vocabulary = str(default_vocabulary())
    vocab, merges = TikTokenConverter(vocab_file=vocabulary).extract_vocab_merges_from_model(vocabulary)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tokenizer = Qwen2Tokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt", additional_special_tokens=list(QWEN2_VL.specials[1:]))
    assert tokenizer.convert_tokens_to_ids(list(QWEN2_VL.specials)) == list(range(151643, 151657))
    return [tokenizer(text)["input_ids"] for text in cases]


def video_size(cases):
    """[total_frames, video_fps, height, width, fps, min_pixels, max_pixels, max_tokens] -> [the frame
    indices, [resized height, width]] as fetch_video picks them (its own lines, on its own smart_nframes,
    smart_resize and constants, with total_pixels = max_tokens * 28 * 28), or the ValueError's message."""
    import torch
    from qwen_vl_utils import vision_process as vp

    factor = 14 * vp.SPATIAL_MERGE_SIZE
    out = []
    for total, video_fps, height, width, fps, min_pixels, max_pixels, max_tokens in cases:
        try:
            nframes = vp.smart_nframes({"fps": fps}, total_frames=total, video_fps=video_fps)
        except ValueError as e:
            out.append(str(e))
            continue
        idx = torch.linspace(0, total - 1, nframes).round().long().tolist()
        total_pixels = max_tokens * factor * factor
        frame_max = vp.VIDEO_MAX_TOKEN_NUM * factor * factor
        budget = min(max_pixels, max(min(frame_max, total_pixels / nframes * vp.FRAME_FACTOR), int(min_pixels * 1.05)))
        try:
            size = vp.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=budget)
        except ValueError as e:
            out.append(str(e))
            continue
        out.append([idx, list(size)])
    return out


def fetch_video(cases):
    """{"video": path, "out": path.npy, and fetch_video's keys} -> [the (T, C, H, W) shape, frames_indices,
    total_num_frames, fps] of fetch_video on its torchvision backend; the frames, float, saved to "out".

    torchvision 0.29 has no io.read_video any more; a stand-in does what it did (torchvision 0.19,
    `io/video.py`): decode every frame with PyAV to RGB, fps the stream's average_rate."""
    import os

    import av
    import numpy as np
    import torch
    import torchvision.io

    def read_video(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
        assert (start_pts, end_pts, output_format) == (0.0, None, "TCHW")
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
            fps = float(stream.average_rate)
        return torch.stack(frames).permute(0, 3, 1, 2), torch.empty(0), {"video_fps": fps}

    torchvision.io.read_video = read_video
    os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"
    from qwen_vl_utils.vision_process import fetch_video

    out = []
    for case in cases:
        ele = {k: v for k, v in case.items() if k != "out"}
        video, meta = fetch_video(ele, return_video_metadata=True)
        np.save(case["out"], video.numpy())
        out.append([list(video.shape), meta["frames_indices"].tolist(), meta["total_num_frames"], meta["fps"]])
    return out


def qwen2_vl(cases):
    """{"folder": a checkpoint folder (config.json, shards, index), "inputs": a .safetensors of input_ids
    [B, T], position_ids [3, B, T], labels [B, T] (-100: not supervised), pixel_values, image_grid_thw,
    pixel_values_videos, video_grid_thw; "out": a .safetensors path} -> from_pretrained's loading info
    ({missing_keys, unexpected_keys, mismatched_keys, error_msgs}) of Qwen2VLForConditionalGeneration
    (eager attention, fp32) on the folder; its logits and loss, and its vision tower's output on the
    images and on the videos alone, saved to "out"."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLForConditionalGeneration

    out = []
    for case in cases:
        model, info = Qwen2VLForConditionalGeneration.from_pretrained(
            case["folder"], attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        model.eval()
        x = load_file(case["inputs"])
        with torch.no_grad():
            result = model(**x)
            images = model.model.visual(x["pixel_values"], grid_thw=x["image_grid_thw"])
            videos = model.model.visual(x["pixel_values_videos"], grid_thw=x["video_grid_thw"])
        save_file({"logits": result.logits, "loss": result.loss.reshape(1), "images": images, "videos": videos}, case["out"])
        out.append({k: sorted(str(v) for v in values) for k, values in info.items()})
    return out


def processors(cases):
    """{"kind": "image" or "video", "frames": a .npy of [F, H, W, 3] uint8 (an image: F = 1), "min_pixels",
    "max_pixels", "out": a .npy path} -> the grid_thw of Qwen2VLImageProcessor (an image) or
    Qwen2VLVideoProcessor (a video) on those frames; their pixel values saved to "out"."""
    import numpy as np
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    out = []
    for case in cases:
        frames = np.load(case["frames"])
        pixels = {"min_pixels": case["min_pixels"], "max_pixels": case["max_pixels"]}
        if case["kind"] == "image":
            result = Qwen2VLImageProcessor(**pixels)(images=[frames[0]], input_data_format="channels_last", return_tensors="np")
            values, grid = result["pixel_values"], result["image_grid_thw"]
        else:
            result = Qwen2VLVideoProcessor(**pixels)(videos=[frames], input_data_format="channels_last", return_tensors="pt")
            values, grid = result["pixel_values_videos"].numpy(), result["video_grid_thw"]
        np.save(case["out"], values)
        out.append(grid[0].tolist())
    return out


def main():
    sys.path.insert(0, str(REFERENCE))
    sys.path.append(str(REFERENCE.parent))  # the project, for the vocabulary's path
    import numpy
    import torch

    for module in (numpy, torch):
        assert REFERENCE not in Path(module.__file__).parents, f"{module.__name__} from {REFERENCE}"
    request = json.load(sys.stdin)
    functions = {"resize": resize, "rope": rope, "nframes": nframes, "tokenize": tokenize, "video_size": video_size, "fetch_video": fetch_video,
                 "qwen2_vl": qwen2_vl, "processors": processors}
    print(json.dumps(functions[request["name"]](request["cases"])))


if __name__ == "__main__":
    main()
