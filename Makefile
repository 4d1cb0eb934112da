# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

# Fonts for synthetic OCR pages (synthetic/documents.py): DejaVu for Latin, WenQuanYi Zen Hei and AR PL
# UMing for Chinese. Debian packages, installed with apt-get (as root, or through sudo) when missing.
FONT_PACKAGES := fonts-dejavu-core fonts-wqy-zenhei fonts-arphic-uming
# Chromium for HTML pages (formats/sources/html_pages.py): Playwright drives /usr/bin/chromium and never
# downloads a browser of its own. Debian's package, installed the same way when /usr/bin/chromium is missing.
BROWSER_PACKAGES := chromium
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get

$(STAMP): pyproject.toml
	dpkg -s $(FONT_PACKAGES) >/dev/null 2>&1 || { $(APT) update && $(APT) install -y --no-install-recommends $(FONT_PACKAGES); }
	[ -x /usr/bin/chromium ] || { $(APT) update && $(APT) install -y --no-install-recommends $(BROWSER_PACKAGES); }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Every annotated set of make-stage2-sample, as stage 2 reads it (both dialects).
STAGE2_SOURCES := --source caption:curated=demo/stage1/curated \
	--source vqa:vqav2=demo/annotated/vqav2 --images vqav2=demo/annotated/coco/train2014 \
	--source caption:coco=demo/annotated/coco/annotations/captions_train2014.json --images coco=demo/annotated/coco/train2014 \
	--source referring:refcoco=demo/annotated/refer/refcoco --source grounded_caption:refcoco=demo/annotated/refer/refcoco \
	--images refcoco=demo/annotated/coco/train2014 --source grounding:grit=demo/annotated/grit \
	--source referring:vg=demo/annotated/vg --source grounded_caption:vg=demo/annotated/vg \
	--source ocr:jsonl=demo/annotated/ocr/pages.jsonl --source ocr:pdf=demo/annotated/pdf --source ocr:html=demo/annotated/html \
	--source ocr:jsonl=demo/annotated/ocr-synth/pages.jsonl --source text:text=demo/annotated/text/docs.jsonl

# The Qwen2-VL run caps images at 1280 tokens (--max-pixels 1280*28*28, Qwen2VLImageProcessor's own default)
# so that every image sample fits the 2048-token sequence; the released limit, 16384 tokens, needs longer ones.
# The demo's CLIP model has random weights (no download): its scores mean nothing, so the demo keeps the
# top 90% of each source by score (quantile mode) instead of LAION's absolute 0.28, which is for real weights.
# Its NSFW and aesthetic heads and its watermark detector are random too (make-score-heads): they run with
# the defaults' thresholds (nsfw_max 1, aesthetic_min 0, watermark_max 1), so they reject only a pair whose
# random aesthetic score is below 0.
# The random model's image embeddings are all alike (median cosine 0.95), so semantic dedup runs with a
# tiny eps, 0.0025: it drops a handful of pairs (0.005 would drop a quarter of them).
demo: $(STAMP)
	$(PY) beam_runner.py make-sample --output demo/raw-en --pairs 2000 --seed 0 --language en
	$(PY) beam_runner.py make-sample --output demo/raw-zh --pairs 500 --seed 1 --language zh
	$(PY) beam_runner.py make-clip --output demo/clip-random
	$(PY) beam_runner.py make-score-heads --output demo/heads-random
	printf '[sources.laion-en]\nclip_min_score = -1.0\nclip_keep_fraction = 0.9\n[sources.laion-zh]\nclip_keep_fraction = 0.9\n' > demo/stage1.toml
	$(PY) beam_runner.py stage1 --input laion-en=demo/raw-en --input laion-zh=demo/raw-zh --output demo/stage1 \
		--config demo/stage1.toml --clip-model local-dir:demo/clip-random \
		--nsfw-model demo/heads-random/nsfw.safetensors --aesthetic-model demo/heads-random/aesthetic.safetensors \
		--watermark-model demo/heads-random/watermark.safetensors --semdedup-eps 0.0025
	$(PY) beam_runner.py inspect demo/stage1/rejected --rows 0 --render demo/rejected.html --limit 300
	$(PY) beam_runner.py make-stage2-sample --output demo/annotated
	$(PY) beam_runner.py stage2 --output demo/stage2 $(STAGE2_SOURCES)
	$(PY) beam_runner.py sft --input demo/annotated/chat/chat.json --output demo/sft
	$(PY) beam_runner.py sft-build --output demo/sft-build --source vqa:vqav2=demo/annotated/vqav2 \
		--source caption:coco=demo/annotated/coco/annotations/captions_train2014.json --source referring:refcoco=demo/annotated/refer/refcoco \
		--images vqav2=demo/annotated/coco/train2014 --images coco=demo/annotated/coco/train2014 --images refcoco=demo/annotated/coco/train2014
	$(PY) beam_runner.py sft --input demo/sft-build/chat/ --output demo/sft-built
	$(PY) beam_runner.py export --from demo/sft/samples --to llamafactory --output demo/export-llamafactory
	$(PY) beam_runner.py export --from demo/stage1/curated --to webdataset --output demo/export-webdataset
	$(PY) beam_runner.py stage2 --dialect qwen2-vl --max-pixels 1003520 --output demo/stage2-qwen2vl $(STAGE2_SOURCES) \
		--source caption:video=demo/annotated/video/captions.jsonl --source vqa:video=demo/annotated/video/qa.jsonl
	$(PY) beam_runner.py sft --dialect qwen2-vl --input demo/annotated/chat/messages.jsonl --output demo/sft-qwen2vl
	$(PY) beam_runner.py inspect demo/stage2/samples --rows 2 --render demo/samples.html --limit 200
	$(PY) beam_runner.py inspect demo/stage2/samples --rows 0 --task ocr --render demo/ocr.html --limit 60
	$(PY) beam_runner.py inspect demo/stage2-qwen2vl/samples --rows 2 --render demo/samples-qwen2vl.html --limit 200
	rm -rf demo/train
	$(PY) -m model.train --stage 2 --data demo/stage2/packed --preset tiny --output demo/train \
		--steps 6 --micro-batch 2 --global-batch 4 --lr 1e-3 --warmup-steps 1 --unit-rows 8
	rm -rf demo/train-qwen2vl
	$(PY) -m model.train --stage 2 --data demo/stage2-qwen2vl/packed --preset qwen2-vl-tiny --output demo/train-qwen2vl \
		--steps 6 --micro-batch 2 --global-batch 4 --lr 1e-3 --warmup-steps 1 --unit-rows 8
	@echo "stage 1: demo/stage1/funnel.png, demo/stage1/scores.png, demo/rejected.html; stage 2: demo/samples.html (boxes drawn on their images), demo/samples-qwen2vl.html (the Qwen2-VL dialect, videos too), demo/ocr.html (drawn, PDF, HTML and synthetic pages with their quads); export: demo/export-llamafactory, demo/export-webdataset; training: demo/train/metrics.jsonl, demo/train-qwen2vl/metrics.jsonl"

# The released Qwen2-VL code the tests compare against (tests/qwen2vl_reference.py): transformers and
# qwen-vl-utils in a folder of their own, as transformers 4.57.6 needs a huggingface-hub below 1.0 and the
# venv's is newer; --no-deps, so numpy, torch and the rest come from the venv.
REFERENCE := .reference
$(REFERENCE)/.installed: $(STAMP)
	rm -rf $(REFERENCE)
	$(PY) -m pip install --quiet --target $(REFERENCE) --no-deps transformers==4.57.6 huggingface-hub==0.36.2 \
		tokenizers==0.22.2 qwen-vl-utils==0.0.14
	touch $@

test: $(STAMP) $(REFERENCE)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf demo .pytest_cache
