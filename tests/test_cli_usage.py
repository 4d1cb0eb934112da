"""The command line: --help, `report` of each stage, and bad usage (one line on stderr, exit status 2, nothing written)."""

import json

import pytest

import beam_runner
from pipelines.stage2 import build_report


@pytest.fixture
def shard(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(b"")
    return str(tmp_path / "in")


def run(argv, capsys):
    code = beam_runner.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_no_command(capsys):
    assert run([], capsys) == (2, "error: no command; use one of: make-sample, make-stage2-sample, make-ocr-sample, make-clip, make-score-heads, stage1, stage2, sft, sft-build, export, report, inspect (each takes --help)")
    assert run(["stage9"], capsys)[1] == "error: unknown command 'stage9'; use one of: make-sample, make-stage2-sample, make-ocr-sample, make-clip, make-score-heads, stage1, stage2, sft, sft-build, export, report, inspect (each takes --help)"


def test_missing_input_path(tmp_path, capsys):
    code, err = run(["stage1", "--input", f"laion-en={tmp_path}/nope", "--output", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, f"error: --input laion-en: nothing matches {tmp_path}/nope")
    assert not (tmp_path / "out").exists()


def test_missing_required_options(tmp_path, capsys):
    assert run(["stage1", "--output", str(tmp_path)], capsys) == (2, "error: beam_runner.py stage1: the following arguments are required: --input")
    assert run(["stage1", "--input", "laion-en"], capsys) == (2, "error: beam_runner.py stage1: the following arguments are required: --output")


def test_bad_input_spec(tmp_path, capsys):
    code, err = run(["stage1", "--input", "laion-en", "--output", str(tmp_path)], capsys)
    assert (code, err) == (2, "error: --input 'laion-en': expected SOURCE=PATH_OR_GLOB, e.g. laion-en=/data/laion/")


def test_unknown_source_in_config(tmp_path, shard, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[sources.laion-em]\nmin_words = 1\n")
    code, err = run(["stage1", "--input", f"laion-en={shard}", "--output", str(tmp_path / "out"), "--config", str(config)], capsys)
    assert (code, err) == (2, f"error: {config}: unknown source 'laion-em' (inputs: laion-en)")
    assert not (tmp_path / "out").exists()


def test_nonsense_threshold(tmp_path, shard, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[sources.laion-en]\nmax_aspect_ratio = 0\n")
    code, err = run(["stage1", "--input", f"laion-en={shard}", "--output", str(tmp_path / "out"), "--config", str(config)], capsys)
    assert (code, err) == (2, "error: source laion-en: max_aspect_ratio must be >= 1, not 0.0")


def test_unknown_option(tmp_path, shard, capsys):
    code, err = run(["stage1", "--input", f"laion-en={shard}", "--output", str(tmp_path / "out"), "--confg", "x.toml"], capsys)
    assert (code, err) == (2, "error: unknown option --confg (neither stage1's nor a Beam pipeline option)")


def test_same_source_twice(tmp_path, shard, capsys):
    code, err = run(["stage1", "--input", f"a={shard}", "--input", f"a={shard}", "--output", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, "error: --input names a source twice: a, a")


def test_report_and_inspect_on_missing_paths(tmp_path, capsys):
    assert run(["report", str(tmp_path)], capsys) == (2, f"error: no report.json in {tmp_path}")
    code, err = run(["inspect", str(tmp_path / "nope.parquet")], capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err


def test_make_sample_bad_pairs(tmp_path, capsys):
    assert run(["make-sample", "--output", str(tmp_path), "--pairs", "0"], capsys) == (2, "error: --pairs must be >= 1, not 0")


def test_bad_model_options(tmp_path, shard, capsys):
    base = ["stage1", "--input", f"laion-en={shard}", "--output", str(tmp_path / "out")]
    assert run(base + ["--langid-model", str(tmp_path / "lid.bin")], capsys) == (2, f"error: language ID model not found: {tmp_path}/lid.bin")
    assert run(base + ["--dedup-distance", "64"], capsys) == (2, "error: --dedup-distance must be in [0, 64), not 64")
    assert run(base + ["--clip-threads", "0"], capsys) == (2, "error: --clip-threads must be >= 1, not 0")
    assert run(base + ["--clip-pretrained", "x.pt"], capsys) == (2, "error: --clip-pretrained needs --clip-model")
    assert run(base + ["--clip-model", f"local-dir:{tmp_path}/nope"], capsys) == (2, f"error: CLIP model folder not found: {tmp_path}/nope")
    code, err = run(base + ["--clip-model", "ViT-B-32"], capsys)
    assert code == 2 and err.startswith("error: CLIP model 'ViT-B-32' has no weights: name an open_clip pretrained tag (")
    assert err.endswith("or a weights file; random weights are refused")
    assert not (tmp_path / "out").exists()


def test_stage2_and_sft_usage(tmp_path, capsys):
    out = ["--output", str(tmp_path / "out")]
    assert run(["stage2", "--source", "vqa=x"] + out, capsys) == (2, "error: --source 'vqa=x': expected TASK:FORMAT=PATH, e.g. vqa:vqav2=/data/vqav2/")
    code, err = run(["stage2", "--source", f"vqa:vqa3={tmp_path}"] + out, capsys)
    assert code == 2 and err.startswith(f"error: --source 'vqa:vqa3={tmp_path}': no converter for vqa:vqa3 (known: caption:coco, caption:curated, ")
    assert run(["stage2", "--source", f"vqa:vqav2={tmp_path}/nope"] + out, capsys) == (2, f"error: --source 'vqa:vqav2={tmp_path}/nope': {tmp_path}/nope does not exist")
    assert run(["stage2", "--source", f"text:text={tmp_path}"] + out, capsys) == (2, f"error: --source text={tmp_path}: no *.txt or *.jsonl files there")
    assert run(["stage2", "--source", f"vqa:vqav2={tmp_path}", "--seq-len", "8"] + out, capsys) == (2, "error: --seq-len must be >= 16, not 8")
    assert run(["stage2", "--source", f"vqa:vqav2={tmp_path}", "--tokenizer", f"{tmp_path}/q.tiktoken"] + out, capsys)[1].startswith(f"error: {tmp_path}/q.tiktoken: cannot read the vocabulary")
    assert run(["sft", "--input", f"{tmp_path}/chat.json"] + out, capsys) == (2, f"error: --input {tmp_path}/chat.json does not exist")
    assert not (tmp_path / "out").exists()


def test_help_lists_the_commands_and_exits_0(capsys):
    for flag in ("--help", "-h"):
        assert beam_runner.main([flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("The one command line of the project.\n")
        assert all(f"python beam_runner.py {name} " in out for name in beam_runner.COMMANDS)


def test_report_of_a_stage2_folder(tmp_path, capsys):
    report = build_report([(("vqa", "vqav2"), 3)], [(("vqa", "image_missing"), 1)], [("vqa", (1, 2048, 1024))], {"stage": "stage2"})
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert beam_runner.main(["report", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stage2: samples, rejects and packing per task"
    assert lines[4] == f"{'vqa':<18}{3:>10,}{1:>10,}{1:>11,}{'50.00%':>12}"
    assert lines[-1] == "rejected: image_missing 1"
    assert run(["report", str(tmp_path), "--chart", str(tmp_path / "f.png")], capsys) == (2, f"error: --chart: {tmp_path} is a stage2 run; the funnel chart is stage 1's")
    (tmp_path / "report.json").write_text("{}")
    assert run(["report", str(tmp_path)], capsys) == (2, f"error: {tmp_path}/report.json is not a report of stage1, stage2 or sft")


def test_command_help_says_what_passes_to_beam_and_what_is_required(capsys):
    for command in ("stage1", "stage2", "sft"):
        with pytest.raises(SystemExit) as exit:
            beam_runner.main([command, "--help"])
        assert exit.value.code == 0
        assert "Any other option is a Beam pipeline option and goes to Beam as it is" in " ".join(capsys.readouterr().out.split())
    from model.train import build_parser

    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert [a.dest for a in actions if not a.help] == []  # every option documented
    assert [a.dest for a in actions if a.help.startswith("REQUIRED")] == ["stage", "data", "preset", "output"]
    assert "REQUIRED: --stage, --data, --preset and --output" in build_parser().format_help().replace("\n", " ")
